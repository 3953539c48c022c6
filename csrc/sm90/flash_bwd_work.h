// The work of one backward CTA: its block of keys (n_block) of one kv head, and the sequence of (query head,
// query block) pairs it walks, the same for the producer warp, the dQ warp and the consumer warpgroups.
//
// The linear block index runs over key blocks fastest: CTAs that run together share one head's Q and dO in L2,
// and under a causal mask the lowest key blocks, which the most queries see, start first (longest first).
// With GQA/MQA the CTA walks every query head of its kv head's group, so dK and dV are summed over the group in
// its registers, without repeated K/V and without atomics.
#pragma once

#include <cstdint>

#include "common/attention_params.h"
#include "common/mask.h"
#include "sm90/flash_bwd_score_mask.h"

namespace jax_flash::sm90 {

template <int kBlockM, int kBlockN>
struct BwdWork {
  int n_block;
  int kv_head;
  int batch;
  int first_head;    // the group's first query head
  int m_begin;       // query blocks [m_begin, m_begin + m_count) see this key block
  int m_count;
  int iterations;    // m_count * group size

  __device__ __forceinline__ BwdWork(const AttentionParams& p, int num_n_blocks) {
    const int linear = int(blockIdx.x);
    n_block = linear % num_n_blocks;
    const int head_batch = linear / num_n_blocks;
    kv_head = head_batch % int(p.heads_k);
    batch = head_batch / int(p.heads_k);
    const int group = int(p.group_size());
    first_head = kv_head * group;
    const IndexRange blocks = KeyBlockMask<kBlockM, kBlockN>(p, n_block).query_blocks();
    m_begin = int(blocks.begin);
    m_count = blocks.empty() ? 0 : int(blocks.end - blocks.begin);
    iterations = m_count * group;
  }

  // The query head and query block of iteration i (query blocks fastest, last first: under a causal mask every key
  // block's walk ends at the last query block, so in deterministic mode, where key block n adds into a query block
  // right after key block n - 1, the CTAs start one step apart rather than two query blocks per key block apart).
  __device__ __forceinline__ int head(int i) const { return first_head + i / m_count; }
  __device__ __forceinline__ int m_block(int i) const { return m_begin + m_count - 1 - i % m_count; }
};

}  // namespace jax_flash::sm90
