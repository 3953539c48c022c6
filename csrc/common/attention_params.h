// The problem one attention call solves, shared by every kernel family (cpu/, sm80/, sm90/).
//
// Layout (row-major, contiguous):
//   q  [B, Sq, Hq, D]     k, v [B, Sk, Hk, D]     o [B, Sq, Hq, D]     lse [B, Hq, Sq] (float32, natural log)
// Query head h reads kv head h / (Hq / Hk) (GQA/MQA without repeating K/V).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define JF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define JF_HOST_DEVICE inline
#endif

namespace jax_flash {

// A window bound of kUnbounded means "no limit on that side".
constexpr int64_t kUnbounded = -1;

struct AttentionParams {
  int64_t batch = 0;
  int64_t seqlen_q = 0;
  int64_t seqlen_k = 0;
  int64_t heads_q = 0;
  int64_t heads_k = 0;
  int64_t head_dim = 0;

  float softmax_scale = 1.0f;
  // softcap > 0 replaces each score s by softcap * tanh(s / softcap) before the softmax.
  float softcap = 0.0f;
  // Bottom-right aligned window: with the diagonal of row i at c(i) = i + Sk - Sq + diagonal_offset, query i sees
  // keys j with c(i) - window_left <= j <= c(i) + window_right. Causal is window_right = 0; kUnbounded on a side
  // removes that bound. diagonal_offset is 0 for the public API; ring attention uses it to place a block of keys
  // at its global position relative to the block of queries.
  int64_t window_left = kUnbounded;
  int64_t window_right = kUnbounded;
  int64_t diagonal_offset = 0;

  // Key index on the diagonal of query row `row`.
  JF_HOST_DEVICE int64_t diagonal(int64_t row) const { return row + seqlen_k - seqlen_q + diagonal_offset; }
  JF_HOST_DEVICE int64_t group_size() const { return heads_q / heads_k; }
  JF_HOST_DEVICE int64_t kv_head(int64_t q_head) const { return q_head / group_size(); }
  // Element strides of one sequence position in q/o and in k/v.
  JF_HOST_DEVICE int64_t q_row_stride() const { return heads_q * head_dim; }
  JF_HOST_DEVICE int64_t kv_row_stride() const { return heads_k * head_dim; }
};

}  // namespace jax_flash
