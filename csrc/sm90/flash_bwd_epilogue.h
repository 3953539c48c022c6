// Backward epilogue of one CTA: dK (times softmax_scale) and dV (float32 registers) -> 16-bit -> shared memory
// (stmatrix, into K's and V's bytes once every GEMM reading them has completed) -> one TMA store each, which clips
// keys past Sk and head-dim columns past D. A key block no query sees stores zeros the same way. When the
// warpgroups split the head dim, the registers hold dK^T and dV^T: they go through the transposed view of the
// same bytes with a transposing stmatrix.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "sm90/flash_bwd_kernel_traits.h"
#include "sm90/flash_bwd_named_barriers.h"
#include "sm90/flash_bwd_work.h"
#include "sm90/fragments.h"

namespace jax_flash::sm90 {

using namespace cute;

template <class Traits>
struct BwdEpilogue {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  static constexpr int kNumMmaThreads = Traits::kNumMmaThreads;

  template <class Params, class Work, class FragKV>
  __device__ __forceinline__ void store(const Params& params, SharedStorage& smem, const Work& work, FragKV& tdKrdK,
                                        const FragKV& tdVrdV, int mma_thread_idx) const {
    CUTE_UNROLL
    for (int j = 0; j < size(tdKrdK); ++j) tdKrdK(j) *= params.softmax_scale;
    Tensor tdKr_out = make_tensor_like<Element>(tdKrdK);
    Tensor tdVr_out = make_tensor_like<Element>(tdVrdV);
    convert_fragment(tdKrdK, tdKr_out);
    convert_fragment(tdVrdV, tdVr_out);

    // dQ = dS K of the other warpgroup may still read K.
    named_barrier_sync(kNumMmaThreads, barrier_id(BwdNamedBarrier::kEpilogueSmemFree));
    Tensor sdK = make_tensor(make_smem_ptr(smem.k.data()), typename Traits::SmemLayoutK{});
    Tensor sdV = make_tensor(make_smem_ptr(smem.v.data()), typename Traits::SmemLayoutK{});
    constexpr bool kTransposed = Traits::kDkvSplitsHeadDim;
    using LayoutAcc = std::conditional_t<kTransposed, typename Traits::SmemLayoutKt, typename Traits::SmemLayoutK>;
    using StoreAtom = std::conditional_t<kTransposed, SM90_U16x8_STSM_T, SM90_U32x4_STSM_N>;
    Tensor sdK_acc = make_tensor(make_smem_ptr(smem.k.data()), LayoutAcc{});  // in the accumulators' (M, N) order
    Tensor sdV_acc = make_tensor(make_smem_ptr(smem.v.data()), LayoutAcc{});
    typename Traits::TiledMmadKV mma_dkv;
    auto smem_copy = make_tiled_copy_C(Copy_Atom<StoreAtom, Element>{}, mma_dkv);
    auto thr_copy = smem_copy.get_thread_slice(mma_thread_idx);
    copy(smem_copy, thr_copy.retile_S(tdKr_out), thr_copy.partition_D(sdK_acc));
    copy(smem_copy, thr_copy.retile_S(tdVr_out), thr_copy.partition_D(sdV_acc));
    cutlass::arch::fence_view_async_shared();  // visible to the TMA store (async proxy)
    named_barrier_sync(kNumMmaThreads, barrier_id(BwdNamedBarrier::kEpilogueSmemFull));

    if (mma_thread_idx == 0) {
      Tensor mdK = params.tma_dk.get_tma_tensor(params.shape_k)(_, _, work.kv_head, work.batch);
      Tensor mdV = params.tma_dv.get_tma_tensor(params.shape_k)(_, _, work.kv_head, work.batch);
      Tensor gdK = local_tile(mdK, typename Params::TileK{}, make_coord(work.n_block, _0{}));
      Tensor gdV = local_tile(mdV, typename Params::TileK{}, make_coord(work.n_block, _0{}));
      auto cta_tma_dk = params.tma_dk.get_slice(_0{});
      auto cta_tma_dv = params.tma_dv.get_slice(_0{});
      copy(params.tma_dk, cta_tma_dk.partition_S(sdK), cta_tma_dk.partition_D(gdK));
      copy(params.tma_dv, cta_tma_dv.partition_S(sdV), cta_tma_dv.partition_D(gdV));
      tma_store_arrive();
      asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
    }
  }
};

}  // namespace jax_flash::sm90
