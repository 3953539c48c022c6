// Backward consumer warpgroups: for each (query head, query block) of the CTA's walk, with warpgroup w owning keys
// [64 w, 64 w + 64) of the CTA's key block:
//   S^T  = K Q^T,  dP^T = V dO^T                     (wgmma, both operands from shared memory)
//   P^T  = exp2(score * scale_log2 - lse_log2)        (score = S, or tanh(S * prescale) with a softcap), masked to 0
//   dS^T = P^T * (dP^T - softmax_d) [* (1 - tanh^2)]  (the gradient of q.k up to the factor softmax_scale)
//   dV  += P^T dO                                     (wgmma, P^T from registers)
//   dQ   = dS K                                       (wgmma; dS through shared memory, both warpgroups' halves)
//   dK  += dS^T Q                                     (wgmma, dS^T from registers)
// and hands dQ (float32, through shared memory) to the dQ warp. dK and dV stay in registers for the whole CTA.
// When the warpgroups split the head dim of dK and dV (Traits::kDkvSplitsHeadDim), each owns half the queries of
// S^T and dP^T instead, P^T goes to shared memory too, and the dK/dV GEMMs are the transposes
//   dV^T += dO^T P,  dK^T += Q^T dS                   (wgmma, all operands from shared memory)
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "sm90/flash_bwd_kernel_traits.h"
#include "sm90/flash_bwd_named_barriers.h"
#include "sm90/flash_bwd_score_mask.h"
#include "sm90/flash_bwd_work.h"
#include "sm90/fragments.h"
#include "sm90/softmax.h"
#include "sm90/warpgroup_gemm.h"

namespace jax_flash::sm90 {

using namespace cute;

// The dK/dV GEMMs take dO^T and Q^T as operand B (P^T, dS^T from registers as A), or as operand A when the
// warpgroups split the head dim (P, dS from shared memory as B).
template <bool kAsA, class WarpgroupMma, class SmemTensor>
__device__ __forceinline__ auto partition_dkv_operand(const WarpgroupMma& wg_mma, const SmemTensor& smem) {
  if constexpr (kAsA) {
    return wg_mma.partition_fragment_A(smem);
  } else {
    return wg_mma.partition_fragment_B(smem);
  }
}

template <class Traits>
struct BwdMainloop {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using State = typename Pipeline::State;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr uint32_t kDqHandoffThreads = Traits::kNumMmaThreads + kWarpSize;

  const int warpgroup;       // 0 .. kNumMmaWarpgroups - 1
  const int mma_thread_idx;  // 0 .. kNumMmaThreads - 1

  // Accumulates this thread's part of dK (without the factor softmax_scale) and dV over the CTA's walk. kSoftcap
  // (params.has_softcap) is a template parameter: as a runtime test the compiler predicates both paths and issues
  // them every step, and two loops in one kernel spill.
  template <bool kSoftcap, class Params, class Work, class FragKV>
  __device__ __forceinline__ void run(const Params& params, SharedStorage& smem, const Pipeline& pipe,
                                      const Work& work, FragKV& tdKrdK, FragKV& tdVrdV) const {
    typename Traits::TiledMmaSdP mma_sdp;
    typename Traits::TiledMmadKV mma_dkv;
    typename Traits::TiledMmadQ mma_dq;
    auto wg_mma_sdp = mma_sdp.get_slice(warpgroup * kWarpgroupThreads);
    auto wg_mma_dkv = mma_dkv.get_slice(warpgroup * kWarpgroupThreads);
    auto wg_mma_dq = mma_dq.get_slice(warpgroup * kWarpgroupThreads);
    auto thr_mma_sdp = mma_sdp.get_thread_slice(mma_thread_idx);
    auto thr_mma_dq = mma_dq.get_thread_slice(mma_thread_idx);

    Tensor sK = make_tensor(make_smem_ptr(smem.k.data()), typename Traits::SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(smem.v.data()), typename Traits::SmemLayoutK{});
    Tensor sKt = make_tensor(make_smem_ptr(smem.k.data()), typename Traits::SmemLayoutKt{});
    Tensor sQ = make_tensor(make_smem_ptr(smem.q.data()), typename Traits::SmemLayoutQ{});
    Tensor sdO = make_tensor(make_smem_ptr(Traits::dout_smem(smem)), typename Traits::SmemLayoutQ{});
    Tensor sQt = make_tensor(make_smem_ptr(smem.q.data()), typename Traits::SmemLayoutQt{});
    Tensor sdOt = make_tensor(make_smem_ptr(Traits::dout_smem(smem)), typename Traits::SmemLayoutQt{});
    Tensor sdS = make_tensor(make_smem_ptr(smem.ds.data()), typename Traits::SmemLayoutdS{});
    Tensor sdSt = make_tensor(make_smem_ptr(smem.ds.data()), typename Traits::SmemLayoutdSt{});

    // wgmma operands (descriptors) of this warpgroup.
    Tensor tSrK = wg_mma_sdp.partition_fragment_A(sK);      // this warpgroup's 64 keys
    Tensor tSrV = wg_mma_sdp.partition_fragment_A(sV);
    Tensor tSrQ = wg_mma_sdp.partition_fragment_B(sQ);      // (MMA, MMA_N, MMA_K, stage)
    Tensor tSrdO = wg_mma_sdp.partition_fragment_B(sdO);
    constexpr bool kSplit = Traits::kDkvSplitsHeadDim;
    // The dQ tile takes the Q/dO stage's memory only where the consumers release the stage within the step.
    static_assert(kSplit || !Traits::kDqInQdOStage, "kDqInQdOStage needs kDkvSplitsHeadDim");
    Tensor tdVrdOt = partition_dkv_operand<kSplit>(wg_mma_dkv, sdOt);  // (MMA, MMA_N or MMA_M, MMA_K, stage)
    Tensor tdKrQt = partition_dkv_operand<kSplit>(wg_mma_dkv, sQt);
    Tensor tdQrdS = wg_mma_dq.partition_fragment_A(sdS);    // (MMA, MMA_M, MMA_K, ds stage)
    Tensor tdQrKt = wg_mma_dq.partition_fragment_B(sKt);

    // Accumulators. P^T and dS^T are converted in place into the register A operand of dV and dK.
    const auto tile_sdp = select<0, 1>(typename Traits::TileShapeSdP{});
    Tensor tSrS = partition_fragment_C(mma_sdp, tile_sdp);
    Tensor tdPrdP = partition_fragment_C(mma_sdp, tile_sdp);
    Tensor tPrP = make_tensor_like<Element>(tSrS);
    Tensor tdSrdS = make_tensor_like<Element>(tdPrdP);
    Tensor tPrP_as_a = make_tensor(tPrP.data(), accumulator_as_operand_a(tPrP.layout()));
    Tensor tdSrdS_as_a = make_tensor(tdSrdS.data(), accumulator_as_operand_a(tdSrdS.layout()));
    Tensor tdQrdQ = partition_fragment_C(mma_dq, select<0, 1>(typename Traits::TileShapedQ{}));

    // dS^T to shared memory with stmatrix: in the transposed view (keys, queries) queries are contiguous.
    auto smem_copy_ds = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, mma_sdp);
    auto thr_copy_ds = smem_copy_ds.get_thread_slice(mma_thread_idx);
    Tensor tdSr_copy = thr_copy_ds.retile_S(tdSrdS);
    Tensor tdSs_copy = thr_copy_ds.partition_D(sdSt);  // (CPY, CPY_M, CPY_N, ds stage)
    // With a split head dim, P^T goes to shared memory the same way.
    Tensor sPt = make_tensor(make_smem_ptr(smem.p.data()), typename Traits::SmemLayoutdSt{});

    // This thread's query columns of the S^T tile (the rows-cols view's second mode).
    Tensor coords = thr_mma_sdp.partition_C(make_identity_tensor(tile_sdp));
    Tensor c = make_tensor(coords.data(), accumulator_rows_cols(coords.layout()));
    Tensor s = make_tensor(tSrS.data(), accumulator_rows_cols(tSrS.layout()));
    Tensor dp = make_tensor(tdPrdP.data(), accumulator_rows_cols(tdPrdP.layout()));
    const KeyBlockMask<kBlockM, kBlockN> mask(params.attn, work.n_block);

    cutlass::arch::ClusterTransactionBarrier::wait(&smem.kv_full, 0);
    // Without a split head dim, dK += dS^T Q of step i runs on the tensor cores under the dQ handoff of step i and
    // is waited for only once S and dP of step i + 1 are issued behind it; its Q stage is released then. With a
    // split head dim, dK^T and dV^T are waited for within the step.
    State st;
    for (int i = 0; i < work.iterations; ++i) {
      const int m_block = work.m_block(i);
      const int ds_stage = i % Traits::kDsStages;
      pipe.consumer_wait(st);
      warpgroup_gemm<-1>(mma_sdp, tSrK, tSrQ(_, _, _, st.index), tSrS, /*zero_init=*/true);
      warpgroup_gemm<-1>(mma_sdp, tSrV, tSrdO(_, _, _, st.index), tdPrdP, /*zero_init=*/true);
      const float* lse_log2 = smem.lse_log2[st.index];
      const float* softmax_d = smem.softmax_d[st.index];
      // S -> P while dP^T is still being computed (with a softcap, S -> tanh first: dS needs it). Groups complete
      // in order, so the previous step's dK is done too.
      warpgroup_wait<1>();
      warpgroup_fence_operand(tSrS);
      if constexpr (!kSplit) {
        warpgroup_fence_operand(tdKrdK);
        if (i > 0) pipe.consumer_release_per_thread(st.previous());
      }
      CUTE_UNROLL
      for (int n = 0; n < size<1>(s); ++n) {
        const float row_lse = lse_log2[get<1>(c(_0{}, n))];
        CUTE_UNROLL
        for (int m = 0; m < size<0>(s); ++m) {
          s(m, n) = kSoftcap ? fast_tanh(s(m, n) * params.softcap_prescale)
                             : fast_exp2(s(m, n) * params.scale_log2 - row_lse);
        }
      }
      warpgroup_wait<0>();
      warpgroup_fence_operand(tdPrdP);
      // dP -> dP - softmax_d (times the softcap's derivative 1 - tanh^2, then tanh -> P).
      CUTE_UNROLL
      for (int n = 0; n < size<1>(s); ++n) {
        const int col = get<1>(c(_0{}, n));
        const float row_lse = lse_log2[col];
        const float row_d = softmax_d[col];
        CUTE_UNROLL
        for (int m = 0; m < size<0>(s); ++m) {
          float grad = dp(m, n) - row_d;
          if constexpr (kSoftcap) {
            const float t = s(m, n);
            grad *= 1.f - t * t;
            s(m, n) = fast_exp2(t * params.scale_log2 - row_lse);
          }
          dp(m, n) = grad;
        }
      }
      if (mask.needs_mask(m_block)) mask.apply(tSrS, thr_mma_sdp, m_block, 0.f);
      CUTE_UNROLL
      for (int j = 0; j < size(tSrS); ++j) tdPrdP(j) *= tSrS(j);
      convert_fragment(tSrS, tPrP);
      convert_fragment(tdPrdP, tdSrdS);

      // dS^T to shared memory before anything else: dQ = dS K of both warpgroups waits for it.
      copy(smem_copy_ds, tdSr_copy, tdSs_copy(_, _, _, ds_stage));
      if constexpr (!kSplit) {
        warpgroup_gemm<-1>(mma_dkv, tPrP_as_a, tdVrdOt(_, _, _, st.index), tdVrdV, /*zero_init=*/false);
      } else {
        copy(smem_copy_ds, thr_copy_ds.retile_S(tPrP), thr_copy_ds.partition_D(sPt)(_, _, _, ds_stage));
      }
      // dS (and P) is read by the other warpgroup's wgmma (async proxy) too.
      cutlass::arch::fence_view_async_shared();
      named_barrier_sync(Traits::kNumMmaThreads, barrier_id(BwdNamedBarrier::kDsFull));
      if constexpr (kSplit) {
        // P and dS as operand B, (keys, queries).
        Tensor tdVrP = wg_mma_dkv.partition_fragment_B(sPt);  // (MMA, MMA_N, MMA_K, ds stage)
        Tensor tdKrdS = wg_mma_dkv.partition_fragment_B(sdSt);
        warpgroup_gemm<-1>(mma_dkv, tdVrdOt(_, _, _, st.index), tdVrP(_, _, _, ds_stage), tdVrdV, /*zero_init=*/false);
        warpgroup_gemm<-1>(mma_dkv, tdKrQt(_, _, _, st.index), tdKrdS(_, _, _, ds_stage), tdKrdK, /*zero_init=*/false);
        warpgroup_gemm<-1>(mma_dq, tdQrdS(_, _, _, ds_stage), tdQrKt, tdQrdQ, /*zero_init=*/true);
        warpgroup_wait<1>();  // dV and dK done: the Q stage may be refilled (or take the dQ tile)
        warpgroup_fence_operand(tdVrdV);
        warpgroup_fence_operand(tdKrdK);
        pipe.consumer_release_per_thread(st);  // with kDqInQdOStage, the dQ warp's release completes it
        warpgroup_wait<0>();
      } else {
        warpgroup_gemm<-1>(mma_dq, tdQrdS(_, _, _, ds_stage), tdQrKt, tdQrdQ, /*zero_init=*/true);
        // Waits for dV and dQ; dK stays in flight.
        warpgroup_gemm<1>(mma_dkv, tdSrdS_as_a, tdKrQt(_, _, _, st.index), tdKrdK, /*zero_init=*/false);
        warpgroup_fence_operand(tdVrdV);
      }
      warpgroup_fence_operand(tdQrdQ);

      // Every consumer thread has passed its waits (so with kDqInQdOStage neither warpgroup reads the stage any
      // more), and the dQ warp is done with the previous tile. Where the tile is swizzled (kDqInQdOStage), on the
      // offset rather than on the address bits, so that the dQ stores stay shared-memory stores (the address-bit
      // form turns them into generic 64-bit stores); elsewhere its rows are padded (Traits::SmemLayoutdQ).
      named_barrier_sync(kDqHandoffThreads, barrier_id(BwdNamedBarrier::kDqEmpty));
      Tensor sdQ = as_position_independent_swizzle_tensor(
          make_tensor(make_smem_ptr(Traits::dq_smem(smem, st.index)), typename Traits::SmemLayoutdQ{}));
      copy(tdQrdQ, thr_mma_dq.partition_C(sdQ));
      cutlass::arch::fence_view_async_shared();  // visible to the TMA reduce-add (async proxy)
      named_barrier_arrive(kDqHandoffThreads, barrier_id(BwdNamedBarrier::kDqFull));
      st.advance();
    }
    if constexpr (!kSplit) {
      warpgroup_wait<0>();
      warpgroup_fence_operand(tdKrdK);
      if (work.iterations > 0) pipe.consumer_release_per_thread(st.previous());  // the last step's stage
    }
  }
};

}  // namespace jax_flash::sm90
