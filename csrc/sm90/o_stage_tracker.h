// Producer side of the O tile's reuse of V's shared memory (Traits::kOStages): which V stages hold an O tile whose
// TMA store may not have read it yet, and the wait before a V load overwrites such a stage.
//
// After loading a tile the producer marks the stages its O will occupy (known from the stage of the tile's last V);
// before a V load into a marked stage it waits on that stage's o_read barrier (one completion per O stored there).
// A stage is never marked twice without a wait in between, so each barrier runs at most one phase ahead of the
// producer's parity and the wait is unambiguous.
#pragma once

#include <cstdint>

#include <cutlass/arch/barrier.h>

namespace jax_flash::sm90 {

template <class Traits>
struct OStageTracker {
  using SharedStorage = typename Traits::SharedStorage;
  static_assert(Traits::kStages <= 32, "one bit per stage");

  uint32_t pending = 0;  // bit s: an O tile in stage s may still be unread
  uint32_t phase = 0;    // bit s: parity of the next completion of o_read[s]

  // Before a V load into `stage`.
  __device__ __forceinline__ void wait_read(SharedStorage& smem, int stage) {
    const uint32_t bit = 1u << stage;
    if (pending & bit) {
      cutlass::arch::ClusterBarrier::wait(&smem.o_read[stage], (phase & bit) ? 1 : 0);
      phase ^= bit;
      pending &= ~bit;
    }
  }

  // After the V loads of a tile whose last V block went into `last_v_stage`: its O will occupy these stages.
  __device__ __forceinline__ void mark_written(SharedStorage& smem, int last_v_stage) {
    const int first = Traits::o_first_stage(last_v_stage);
    for (int i = 0; i < Traits::kOStages; ++i) {
      wait_read(smem, first + i);  // an older O in the stage (possible when O covers every stage)
      pending |= 1u << (first + i);
    }
  }
};

}  // namespace jax_flash::sm90
