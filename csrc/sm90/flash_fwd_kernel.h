// The forward kernel: a persistent, warp-specialised CTA per SM.
//   warpgroup 0, warp 0: producer (TMA loads of Q, K, V; claims tiles for the dynamic scheduler)
//   warpgroup 0, warps 1-3: give their registers away and exit
//   warpgroups 1..: consumers (wgmma + softmax), then the epilogue of each tile
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "sm90/epilogue.h"
#include "sm90/kernel_params.h"
#include "sm90/kernel_traits.h"
#include "sm90/mainloop_load.h"
#include "sm90/mainloop_mma.h"
#include "sm90/tile_scheduler.h"

namespace jax_flash::sm90 {

template <class Traits>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    flash_fwd_kernel(const __grid_constant__ FwdParams<Traits> params) {
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using State = typename Pipeline::State;
  using Scheduler = TileScheduler<Traits::kNumMmaThreads, Traits::kNumProducerThreads>;

  extern __shared__ __align__(kSwizzleAlignment) char smem_raw[];
  SharedStorage& smem = *reinterpret_cast<SharedStorage*>(smem_raw);

  const int warp = cutlass::canonical_warp_idx_sync();
  const int warpgroup = cutlass::canonical_warp_group_idx();
  if (warp == 0 && cute::elect_one_sync()) {
    prefetch_tma_descriptor(params.tma_q.get_tma_descriptor());
    prefetch_tma_descriptor(params.tma_k.get_tma_descriptor());
    prefetch_tma_descriptor(params.tma_v.get_tma_descriptor());
    prefetch_tma_descriptor(params.tma_o.get_tma_descriptor());
    Pipeline::init(smem.pipeline_k, Traits::kNumMmaWarps);
    Pipeline::init(smem.pipeline_v, Traits::kNumMmaWarps);
    cutlass::arch::ClusterTransactionBarrier::init(&smem.q_full, 1);
    cutlass::arch::ClusterBarrier::init(&smem.o_read, 1);
  }
  cutlass::arch::fence_barrier_init();
  __syncthreads();

  const Scheduler scheduler{params.scheduler, &smem.next_tile};
  const Pipeline pipe_k{&smem.pipeline_k};
  const Pipeline pipe_v{&smem.pipeline_v};
  State st;
  int work_idx = 0;

  if (warpgroup == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegisters>();
    if (warp != 0) return;
    const MainloopLoad<Traits> load;
    for (int tile = scheduler.initial_tile(); scheduler.valid(tile);) {
      const int prefetched = load.load_tile(params, smem, pipe_k, pipe_v, st, work_idx, tile, scheduler.coord(tile),
                                            scheduler);
      tile = scheduler.producer_next(prefetched);
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kMmaRegisters>();
    const int mma_thread_idx = threadIdx.x - kWarpgroupThreads;
    const MainloopMma<Traits> mainloop(warpgroup - 1);
    const Epilogue<Traits> epilogue;
    mainloop.init();
    scheduler.consumer_init();
    for (int tile = scheduler.initial_tile(); scheduler.valid(tile);) {
      const TileCoord coord = scheduler.coord(tile);
      Tensor tOrO = partition_fragment_C(typename Traits::TiledMmaPV{}, select<0, 1>(typename Traits::TileShapePV{}));
      float lse[MainloopMma<Traits>::kRowsPerThread];
      const bool has_keys =
          mainloop.run(params, smem, pipe_k, pipe_v, st, work_idx, coord, mma_thread_idx, tOrO, lse);
      // Claim the next tile before the epilogue, so the producer can start loading it meanwhile.
      tile = scheduler.consumer_next(tile);
      if (has_keys) {
        epilogue.store(params, smem, tOrO, lse, coord, mma_thread_idx);
      } else {
        epilogue.store_zero(params, coord, mma_thread_idx);
      }
    }
    epilogue.finish(mma_thread_idx);
  }
}

}  // namespace jax_flash::sm90
