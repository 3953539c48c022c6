// The backward main kernel: one warp-specialised CTA per (key block, kv head, batch).
//   warpgroup 0, warp 0: producer (TMA of K, V once; Q, dO and their row statistics per query block)
//   warpgroup 0, warp 1: dQ warp (TMA reduce-add of each query block's float32 dQ into the dq accumulator)
//   warpgroup 0, warps 2-3: give their registers away and exit
//   warpgroups 1, 2: consumers (the five GEMMs), then the dK/dV epilogue
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "sm90/flash_bwd_dq_writer.h"
#include "sm90/flash_bwd_epilogue.h"
#include "sm90/flash_bwd_kernel_traits.h"
#include "sm90/flash_bwd_load.h"
#include "sm90/flash_bwd_mainloop.h"
#include "sm90/flash_bwd_params.h"
#include "sm90/flash_bwd_work.h"

namespace jax_flash::sm90 {

// kSoftcap: params.has_softcap, as a compile-time variant of the consumers' step.
template <class Traits, bool kSoftcap>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    flash_bwd_kernel(const __grid_constant__ BwdParams<Traits> params) {
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  constexpr int kProducerWarp = 0;
  constexpr int kDqWarp = 1;

  extern __shared__ __align__(kSwizzleAlignment) char smem_raw[];
  SharedStorage& smem = *reinterpret_cast<SharedStorage*>(smem_raw);

  const int warp = cutlass::canonical_warp_idx_sync();
  const int warpgroup = cutlass::canonical_warp_group_idx();
  if (warp == kProducerWarp && cute::elect_one_sync()) {
    prefetch_tma_descriptor(params.tma_q.get_tma_descriptor());
    prefetch_tma_descriptor(params.tma_do.get_tma_descriptor());
    prefetch_tma_descriptor(params.tma_k.get_tma_descriptor());
    prefetch_tma_descriptor(params.tma_v.get_tma_descriptor());
    prefetch_tma_descriptor(params.tma_dq.get_tma_descriptor());
    prefetch_tma_descriptor(params.tma_dk.get_tma_descriptor());
    prefetch_tma_descriptor(params.tma_dv.get_tma_descriptor());
    Pipeline::init(smem.pipeline_q, Traits::kQEmptyArrivals, Traits::kQFullArrivals);
    cutlass::arch::ClusterTransactionBarrier::init(&smem.kv_full, 1);
  }
  cutlass::arch::fence_barrier_init();
  __syncthreads();

  const BwdWork<Traits::kBlockM, Traits::kBlockN> work(params.attn, params.num_n_blocks);
  const Pipeline pipe{&smem.pipeline_q};

  if (warpgroup == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegisters>();
    if (warp == kProducerWarp) {
      BwdLoad<Traits>{}.run(params, smem, pipe, work);
    } else if (warp == kDqWarp) {
      BwdDqWriter<Traits>{}.run(params, smem, pipe, work);
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kMmaRegisters>();
    const int mma_thread_idx = threadIdx.x - kWarpgroupThreads;
    Tensor tdKrdK = partition_fragment_C(typename Traits::TiledMmadKV{},
                                         select<0, 1>(typename Traits::TileShapedKV{}));
    Tensor tdVrdV = make_tensor_like(tdKrdK);
    clear(tdKrdK);
    clear(tdVrdV);
    const BwdMainloop<Traits> mainloop{warpgroup - 1, mma_thread_idx};
    mainloop.template run<kSoftcap>(params, smem, pipe, work, tdKrdK, tdVrdV);
    BwdEpilogue<Traits>{}.store(params, smem, work, tdKrdK, tdVrdV, mma_thread_idx);
  }
}

}  // namespace jax_flash::sm90
