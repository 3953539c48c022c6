// Hardware named barriers (bar.sync / bar.arrive) of the backward kernel. Id 0 is __syncthreads.
#pragma once

#include <cstdint>

#include "sm90/named_barriers.h"

namespace jax_flash::sm90 {

enum class BwdNamedBarrier : uint32_t {
  // The dQ warp's TMA has read the float32 dQ tile out of shared memory / the consumers have written the next one.
  kDqEmpty = 1,
  kDqFull = 2,
  // Both consumer warpgroups have written their half of dS to shared memory (dQ = dS K reads all of it).
  kDsFull = 3,
  // Epilogue: every GEMM reading K and V has completed / dK and dV are in their shared memory for the TMA store.
  kEpilogueSmemFree = 4,
  kEpilogueSmemFull = 5,
};

__device__ __forceinline__ uint32_t barrier_id(BwdNamedBarrier b) { return static_cast<uint32_t>(b); }

}  // namespace jax_flash::sm90
