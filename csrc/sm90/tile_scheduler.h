// Persistent tile scheduler: a grid of at most one CTA per SM walks the (m_block, head, batch) tiles.
//
// Unmasked problems have equal tiles: CTA c takes tiles c, c + grid, c + 2 grid, ... (static, no communication),
// with m_block fastest so that CTAs running together share one head's K/V in L2.
// Causal/window problems have tiles of unequal work: a global counter hands out tiles in longest-first order
// (largest m_block first under the bottom-right-aligned mask), head-batch pairs grouped into sections whose K/V
// fit in L2. The producer warp fetches the next tile while it loads the current one; it hands the index to the
// consumers through a shared-memory slot and two mbarriers that the producer's lane 0 and every consumer thread
// arrive on in every phase (so neither side keeps a parity): full completes once the producer has stored the index
// (its arrive releases the store), empty once every consumer has loaded it (each thread's arrive releases its load).
#pragma once

#include <cstdint>

#include <cutlass/arch/barrier.h>

#include "sm90/mbarrier.h"

namespace jax_flash::sm90 {

struct SchedulerParams {
  int num_m_blocks;
  int num_heads;          // query heads
  int num_head_batches;   // batch * query heads
  int total_tiles;
  int heads_per_section;  // longest-first order runs within sections of this many head-batch pairs
  int* tile_counter;      // null: static schedule; else a zeroed counter (dynamic, longest-first)
};

struct TileCoord {
  int m_block;
  int head;
  int batch;
};

template <int kNumMmaThreads, int kNumProducerThreads>
struct TileScheduler {
  // The next-tile slot and its barriers (used by the dynamic schedule only), each with kNumMmaThreads + 1 arrivals.
  struct SharedStorage {
    uint64_t full;   // the consumers before their wait; the producer's lane 0 after its store
    uint64_t empty;  // the consumers after their load (and once at the start); the producer's lane 0 before its wait
    int next_tile;
  };
  static constexpr int kSlotArrivals = kNumMmaThreads + 1;

  const SchedulerParams& params;
  SharedStorage* slot;

  // One thread initialises; the caller fences (fence_barrier_init) and syncs the CTA before first use.
  __device__ __forceinline__ static void init(SharedStorage& s) {
    cutlass::arch::ClusterBarrier::init(&s.full, kSlotArrivals);
    cutlass::arch::ClusterBarrier::init(&s.empty, kSlotArrivals);
  }

  __device__ __forceinline__ bool dynamic() const { return params.tile_counter != nullptr; }
  __device__ __forceinline__ bool valid(int tile) const { return tile < params.total_tiles; }
  __device__ __forceinline__ int initial_tile() const { return blockIdx.x; }

  __device__ __forceinline__ TileCoord coord(int tile) const {
    int m_block, head_batch;
    if (!dynamic()) {
      m_block = tile % params.num_m_blocks;
      head_batch = tile / params.num_m_blocks;
    } else {
      const int tiles_per_section = params.heads_per_section * params.num_m_blocks;
      const int section = tile / tiles_per_section;
      const int first = section * params.heads_per_section;
      const int heads_here = min(params.heads_per_section, params.num_head_batches - first);
      const int rank = tile - section * tiles_per_section;
      m_block = params.num_m_blocks - 1 - rank / heads_here;
      head_batch = first + rank % heads_here;
    }
    return {m_block, head_batch % params.num_heads, head_batch / params.num_heads};
  }

  // Producer warp, during the loads of `tile`: claim the next tile (lane 0 holds the claimed index).
  __device__ __forceinline__ int producer_prefetch(int tile) const {
    if (!dynamic()) return tile + gridDim.x;
    return threadIdx.x % kNumProducerThreads == 0 ? atomicAdd(params.tile_counter, 1) + int(gridDim.x) : 0;
  }

  // Consumers, once before their first tile: the slot starts free.
  __device__ __forceinline__ void consumer_init() const {
    if (dynamic()) mbarrier_arrive(&slot->empty);
  }

  // Producer warp: publish the prefetched tile and return it.
  __device__ __forceinline__ int producer_next(int prefetched) const {
    if (!dynamic()) return prefetched;
    const int next = __shfl_sync(0xffffffff, prefetched, 0);
    if (threadIdx.x % kNumProducerThreads == 0) {
      mbarrier_wait_phase(&slot->empty, mbarrier_arrive_phase(&slot->empty));  // the consumers have read the last
      slot->next_tile = next;
      mbarrier_arrive(&slot->full);
    }
    __syncwarp();
    return next;
  }

  // Consumers: the tile after `tile`.
  __device__ __forceinline__ int consumer_next(int tile) const {
    if (!dynamic()) return tile + gridDim.x;
    mbarrier_wait_phase(&slot->full, mbarrier_arrive_phase(&slot->full));
    const int next = slot->next_tile;
    mbarrier_arrive(&slot->empty);
    return next;
  }
};

}  // namespace jax_flash::sm90
