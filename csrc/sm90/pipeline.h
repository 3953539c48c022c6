// A ring of shared-memory stages filled by TMA and drained by wgmma, synchronised by mbarriers:
// full[s] completes when the TMA bytes of stage s have landed; empty[s] completes when every consumer has finished
// reading stage s. One producer thread; the consumers release a stage per warp (stages only wgmma reads) or per
// thread (stages their threads also read with ordinary loads).
#pragma once

#include <cstdint>

#include <cutlass/arch/barrier.h>

#include "sm90/mbarrier.h"

namespace jax_flash::sm90 {

// Position in the ring: the stage index and the parity of the current pass over the ring.
template <int kStages>
struct PipelineState {
  int index = 0;
  uint32_t phase = 0;

  __device__ __forceinline__ void advance() {
    if (++index == kStages) {
      index = 0;
      phase ^= 1;
    }
  }

  // The position one step back (a consumer that holds on to a stage for one more step releases it from there).
  __device__ __forceinline__ PipelineState previous() const {
    return index == 0 ? PipelineState{kStages - 1, phase ^ 1} : PipelineState{index - 1, phase};
  }
};

template <int kStages_>
struct TmaPipeline {
  static constexpr int kStages = kStages_;
  using State = PipelineState<kStages>;
  using FullBarrier = cutlass::arch::ClusterTransactionBarrier;
  using EmptyBarrier = cutlass::arch::ClusterBarrier;

  struct SharedStorage {
    uint64_t full[kStages];
    uint64_t empty[kStages];
  };

  SharedStorage* storage;

  // One thread initialises; the caller fences (fence_barrier_init) and syncs the CTA before first use.
  // `num_producer_arrivals`: arrivals that complete a full barrier besides the TMA bytes (the armer's one, plus
  // producer threads that fill part of a stage with ordinary stores).
  // `num_consumer_arrivals`: the consumer warps (consumer_release) or threads (consumer_release_per_thread).
  __device__ __forceinline__ static void init(SharedStorage& s, int num_consumer_arrivals,
                                              int num_producer_arrivals = 1) {
    for (int i = 0; i < kStages; ++i) {
      FullBarrier::init(&s.full[i], num_producer_arrivals);
      EmptyBarrier::init(&s.empty[i], num_consumer_arrivals);
    }
  }

  // Producer warp (all lanes): wait until the consumers released the stage; the first pass over fresh barriers
  // does not wait.
  __device__ __forceinline__ void producer_wait(const State& st) const {
    EmptyBarrier::wait(&storage->empty[st.index], st.phase ^ 1);
  }

  // Producer leader lane: announce the bytes the TMA copies into the stage will deliver; returns the barrier
  // those copies complete on.
  __device__ __forceinline__ uint64_t& producer_arm(const State& st, uint32_t tma_bytes) const {
    FullBarrier::arrive_and_expect_tx(&storage->full[st.index], tma_bytes);
    return storage->full[st.index];
  }

  __device__ __forceinline__ void consumer_wait(const State& st) const {
    FullBarrier::wait(&storage->full[st.index], st.phase);
  }

  // Called by every consumer thread after its warpgroup_wait covered the GEMM that read the stage; one lane per
  // warp signals, after the whole warp has passed that wait.
  __device__ __forceinline__ void consumer_release(const State& st) const {
    __syncwarp();
    if (threadIdx.x % 32 == 0) EmptyBarrier::arrive(&storage->empty[st.index]);
  }

  // Called by every consumer thread once it is done with the stage, for stages its threads also read with ordinary
  // loads: each thread's own arrive (release) orders its loads before the producer's refill (the wait, acquire),
  // with no warp-level sync between a lane's loads and another lane's arrive (one that compute-sanitizer's
  // racecheck cannot follow).
  __device__ __forceinline__ void consumer_release_per_thread(const State& st) const {
    mbarrier_arrive(&storage->empty[st.index]);
  }
};

}  // namespace jax_flash::sm90
