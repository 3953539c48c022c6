// Hardware named barriers (bar.sync / bar.arrive) the forward kernel uses between its warp roles. Id 0 is
// __syncthreads; every id the kernel uses is listed here so that none collide.
#pragma once

#include <cstdint>

namespace jax_flash::sm90 {

enum class NamedBarrier : uint32_t {
  // Consumers finished their last S = Q K^T of a tile: the producer may load the next tile's Q.
  kQueryEmpty = 1,
  // Epilogue: every consumer finished reading V (O reuses V's bytes) / O is in shared memory for the TMA store.
  kEpilogueSmemFree = 2,
  kEpilogueSmemFull = 3,
  // Ping-pong: consumer warpgroup w waits on kWarpgroupTurn + w for its turn on the tensor cores.
  kWarpgroupTurn = 6,  // ids 6, 7, 8 for up to three consumer warpgroups
};

__device__ __forceinline__ uint32_t barrier_id(NamedBarrier b, uint32_t offset = 0) {
  return static_cast<uint32_t>(b) + offset;
}

// Blocks until `num_threads` threads (this one included) have arrived on the barrier.
__device__ __forceinline__ void named_barrier_sync(uint32_t num_threads, uint32_t id) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(num_threads) : "memory");
}

// Counts this thread towards the barrier without waiting.
__device__ __forceinline__ void named_barrier_arrive(uint32_t num_threads, uint32_t id) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(num_threads) : "memory");
}

}  // namespace jax_flash::sm90
