// The fixed order in which key blocks add their dQ into a query block in deterministic mode: ascending key block.
// Both CUDA families split keys and queries into blocks of their own sizes; the key blocks that touch query block
// m_block are those whose visible queries (common/mask.h) reach into it, and a key block's turn is how many of
// them come before it. A per-(batch, query head, query block) counter, zeroed before the backward, holds the
// number of key blocks that have added so far.
#pragma once

#include <cstdint>

#include "common/attention_params.h"
#include "common/mask.h"

namespace jax_flash {

// True when some query of block m_block (rows of kBlockM) sees a key of block n_block (keys of kBlockN).
JF_HOST_DEVICE bool key_block_touches(const AttentionParams& p, int64_t block_m, int64_t block_n, int64_t m_block,
                                      int64_t n_block) {
  const IndexRange keys{n_block * block_n, jf_min((n_block + 1) * block_n, p.seqlen_k)};
  if (keys.empty()) return false;
  const IndexRange rows = visible_queries(p, keys);
  return !rows.empty() && rows.begin < (m_block + 1) * block_m && rows.end > m_block * block_m;
}

// The index of the semaphore of (batch, query head, query block) in an int32 [B, Hq, Sq] workspace: the entry of
// the block's first row.
JF_HOST_DEVICE int64_t dq_semaphore_index(const AttentionParams& p, int64_t batch, int64_t head, int64_t block_m,
                                          int64_t m_block) {
  return (batch * p.heads_q + head) * p.seqlen_q + m_block * block_m;
}

#if defined(__CUDACC__)
// Called by all 32 lanes of a warp: how many key blocks before n_block touch query block m_block (n_block's turn).
__device__ __forceinline__ int dq_turn(const AttentionParams& p, int64_t block_m, int64_t block_n, int64_t m_block,
                                       int64_t n_block) {
  constexpr int kLanes = 32;
  int turn = 0;
  for (int64_t base = 0; base < n_block; base += kLanes) {
    const int64_t n = base + threadIdx.x % kLanes;
    turn += __popc(__ballot_sync(0xffffffffu, n < n_block && key_block_touches(p, block_m, block_n, m_block, n)));
  }
  return turn;
}

// One thread: waits until the key blocks before this one have added (acquire: their additions are visible).
__device__ __forceinline__ void dq_wait_turn(const int* semaphore, int turn) {
  int done;
  do {
    asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(done) : "l"(semaphore) : "memory");
  } while (done != turn);
}

// One thread, once this key block's additions have completed: the next key block may add (release).
__device__ __forceinline__ void dq_pass_turn(int* semaphore) {
  asm volatile("red.release.gpu.global.add.s32 [%0], 1;" ::"l"(semaphore) : "memory");
}
#endif

}  // namespace jax_flash
