// Consumer warpgroups: for one query tile, S = Q K^T (wgmma, both from shared memory), softcap and mask, online
// softmax, and O += P V (wgmma, P from registers), over the key blocks last to first.
//
// Ping-pong (Traits::kPingPong): each consumer warpgroup issues its GEMMs only in its turn, and passes the turn on
// right after issuing, so one warpgroup's softmax runs while the other's GEMMs occupy the tensor cores.
// Intra-warpgroup overlap (Traits::kIntraWarpgroupOverlap): one step issues S = Q K^T of block j - 1 and
// O += P V of block j, then does the softmax of block j - 1 while O += P V still runs.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "common/mask.h"
#include "sm90/fragments.h"
#include "sm90/kernel_traits.h"
#include "sm90/named_barriers.h"
#include "sm90/score_mask.h"
#include "sm90/softmax.h"
#include "sm90/tile_scheduler.h"
#include "sm90/warpgroup_gemm.h"

namespace jax_flash::sm90 {

using namespace cute;

template <class Traits>
struct MainloopMma {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using State = typename Pipeline::State;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kNumMmaWarpgroups = Traits::kNumMmaWarpgroups;
  // A thread holds two rows (r, r + 8) of its warpgroup's 64-row accumulators.
  static constexpr int kRowsPerThread = 2;
  using Softmax = OnlineSoftmax<kRowsPerThread>;
  static constexpr uint32_t kTurnThreads = 2 * kWarpgroupThreads;  // the warpgroup waiting + the one passing

  const int warpgroup;  // 0 .. kNumMmaWarpgroups - 1

  __device__ __forceinline__ explicit MainloopMma(int warpgroup_) : warpgroup(warpgroup_) {}

  // Once per kernel, before the first tile: Q's buffer starts free, and the first warpgroup holds the first turn.
  __device__ __forceinline__ void init() const {
    named_barrier_arrive(Traits::kNumMmaThreads + Traits::kNumProducerThreads,
                         barrier_id(NamedBarrier::kQueryEmpty));
    if constexpr (Traits::kPingPong) {
      if (warpgroup == 0) named_barrier_arrive(kTurnThreads, barrier_id(NamedBarrier::kWarpgroupTurn, 0));
    }
  }

  __device__ __forceinline__ void wait_turn() const {
    if constexpr (Traits::kPingPong) named_barrier_sync(kTurnThreads, barrier_id(NamedBarrier::kWarpgroupTurn, warpgroup));
  }
  __device__ __forceinline__ void pass_turn() const {
    if constexpr (Traits::kPingPong) {
      const int next = warpgroup + 1 == kNumMmaWarpgroups ? 0 : warpgroup + 1;
      named_barrier_arrive(kTurnThreads, barrier_id(NamedBarrier::kWarpgroupTurn, next));
    }
  }

  // Computes this thread's part of O (normalised) and lse for the tile. Returns false, touching no barrier and
  // no pipeline stage, when no row of the tile sees a key (the producer loaded nothing for it).
  template <class Params, class FragO>
  __device__ __forceinline__ bool run(const Params& params, SharedStorage& smem, const Pipeline& pipe_k,
                                      const Pipeline& pipe_v, State& st, int& work_idx, const TileCoord& coord,
                                      int mma_thread_idx, FragO& tOrO, float (&lse)[kRowsPerThread]) const {
    const ScoreMask<kBlockM, kBlockN> mask(params.attn, coord.m_block);
    const IndexRange blocks = mask.key_blocks();
    if (blocks.empty()) return false;

    typename Traits::TiledMmaQK mma_qk;
    typename Traits::TiledMmaPV mma_pv;
    auto wg_mma_qk = mma_qk.get_slice(warpgroup * kWarpgroupThreads);
    auto wg_mma_pv = mma_pv.get_slice(warpgroup * kWarpgroupThreads);
    auto thr_mma_qk = mma_qk.get_thread_slice(mma_thread_idx);

    Tensor sQ = make_tensor(make_smem_ptr(smem.tensors.mainloop.q.data()), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(smem.tensors.mainloop.k.data()), typename Traits::SmemLayoutK{});
    Tensor sVt = make_tensor(make_smem_ptr(smem.tensors.mainloop.v.data()), typename Traits::SmemLayoutVt{});
    Tensor tSrQ = wg_mma_qk.partition_fragment_A(sQ);   // wgmma descriptors of this warpgroup's 64 rows of Q
    Tensor tSrK = wg_mma_qk.partition_fragment_B(sK);   // (MMA, MMA_N, MMA_K, stage)
    Tensor tOrV = wg_mma_pv.partition_fragment_B(sVt);  // (MMA, MMA_N, MMA_K, stage)
    Tensor tSrS = partition_fragment_C(mma_qk, select<0, 1>(typename Traits::TileShapeQK{}));
    Tensor tSrS_as_a = make_tensor(tSrS.data(), accumulator_as_operand_a(tSrS.layout()));
    Tensor tOrP = make_tensor<Element>(tSrS_as_a.layout());  // P = softmax(S) as the A operand of O += P V

    // Softcap first: applied after the mask it would turn the masked -inf into -softcap.
    auto transform_scores = [&](int n_block) {
      if (params.has_softcap) apply_softcap(tSrS, params.softcap_prescale);
      if (mask.needs_mask(n_block)) mask.apply(tSrS, thr_mma_qk, n_block);
    };
    auto scores_to_p = [&] { convert_fragment(tSrS_as_a, tOrP); };
    auto k_stage = [&](const State& s) { return tSrK(_, _, _, s.index); };
    auto v_stage = [&](const State& s) { return tOrV(_, _, _, s.index); };

    Softmax softmax(params.scale_log2);
    float o_scale[kRowsPerThread];
    CUTE_UNROLL
    for (int m = 0; m < kRowsPerThread; ++m) o_scale[m] = 1.f;

    cutlass::arch::ClusterTransactionBarrier::wait(&smem.q_full, work_idx & 1);
    int n_block = int(blocks.end) - 1;

    if constexpr (Traits::kIntraWarpgroupOverlap) {
      // The first S = Q K^T takes a turn too, so that the warpgroups start each tile already staggered.
      pipe_k.consumer_wait(st);
      wait_turn();
      warpgroup_gemm<-1>(mma_qk, tSrQ, k_stage(st), tSrS, /*zero_init=*/true);
      pass_turn();
      warpgroup_wait<0>();
      warpgroup_fence_operand(tSrS);
      pipe_k.consumer_release(st);
      transform_scores(n_block);
      softmax.first_block(tSrS);
      scores_to_p();
      clear(tOrO);
      for (--n_block; n_block >= int(blocks.begin); --n_block) {
        const State st_v = st;  // V of the block whose P is in registers
        st.advance();
        pipe_k.consumer_wait(st);
        wait_turn();
        warpgroup_gemm<-1>(mma_qk, tSrQ, k_stage(st), tSrS, /*zero_init=*/true);
        if constexpr (Traits::kRescaleOBeforePV) rescale_o(tOrO, o_scale);
        pipe_v.consumer_wait(st_v);
        warpgroup_gemm<-1>(mma_pv, tOrP, v_stage(st_v), tOrO, /*zero_init=*/false);
        pass_turn();
        warpgroup_wait<1>();  // S = Q K^T done; O += P V may still run
        warpgroup_fence_operand(tSrS);
        pipe_k.consumer_release(st);
        transform_scores(n_block);
        softmax.next_block(tSrS, o_scale);
        warpgroup_wait<0>();
        warpgroup_fence_operand(tOrO);
        warpgroup_fence_operand(tOrP);
        pipe_v.consumer_release(st_v);
        scores_to_p();
        if constexpr (!Traits::kRescaleOBeforePV) rescale_o(tOrO, o_scale);
      }
      release_query();
      if constexpr (Traits::kRescaleOBeforePV) rescale_o(tOrO, o_scale);
      pipe_v.consumer_wait(st);
      warpgroup_gemm<-1>(mma_pv, tOrP, v_stage(st), tOrO, /*zero_init=*/false);
      float inv_sum[kRowsPerThread];
      softmax.finalize(inv_sum, lse);
      warpgroup_wait<0>();
      warpgroup_fence_operand(tOrO);
      pipe_v.consumer_release(st);
      Softmax::rescale(tOrO, inv_sum);
      st.advance();
    } else {
      wait_turn();
      for (bool first = true; n_block >= int(blocks.begin); --n_block, first = false) {
        pipe_k.consumer_wait(st);
        warpgroup_gemm<-1>(mma_qk, tSrQ, k_stage(st), tSrS, /*zero_init=*/true);
        pass_turn();
        warpgroup_wait<0>();
        warpgroup_fence_operand(tSrS);
        pipe_k.consumer_release(st);
        transform_scores(n_block);
        if (first) {
          softmax.first_block(tSrS);
        } else {
          softmax.next_block(tSrS, o_scale);
          rescale_o(tOrO, o_scale);
        }
        scores_to_p();
        pipe_v.consumer_wait(st);
        wait_turn();
        warpgroup_gemm<0>(mma_pv, tOrP, v_stage(st), tOrO, /*zero_init=*/first);
        pipe_v.consumer_release(st);
        st.advance();
      }
      pass_turn();
      release_query();
      float inv_sum[kRowsPerThread];
      softmax.finalize(inv_sum, lse);
      Softmax::rescale(tOrO, inv_sum);
    }
    ++work_idx;
    return true;
  }

 private:
  // O *= o_scale per row, skipped when every factor of this thread's rows is 1 (the usual case, see softmax.h).
  template <class FragO>
  __device__ __forceinline__ static void rescale_o(FragO& tOrO, const float (&o_scale)[kRowsPerThread]) {
    if (Softmax::rescale_needed(o_scale)) Softmax::rescale(tOrO, o_scale);
  }

  // Every S = Q K^T of the tile has completed: the producer may overwrite Q.
  __device__ __forceinline__ void release_query() const {
    named_barrier_arrive(Traits::kNumMmaThreads + Traits::kNumProducerThreads,
                         barrier_id(NamedBarrier::kQueryEmpty));
  }
};

}  // namespace jax_flash::sm90
