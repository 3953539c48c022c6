// Online softmax over the key blocks of one query block (FlashAttention-2): exp2 with the scale folded into one FFMA,
// a running row max, per-thread partial row sums that are reduced across the quad only once, and a single division
// of the output at the end.
//
// A row of an SM80 accumulator is spread over the 4 threads of a quad (lanes 4r..4r+3), so row reductions need two
// shuffles and never leave the warp.
#pragma once

#include <cmath>

#include <cute/tensor.hpp>

#include "sm80/fragment_layout.h"

namespace jax_flash::sm80 {

constexpr float kNegInf = -INFINITY;

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
}

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x + __shfl_xor_sync(0xffffffffu, x, 1);
}

// Rows that saw only masked keys so far have max -inf; they exponentiate against 0 instead, so that
// exp2(-inf - 0) = 0 rather than exp2(-inf + inf) = NaN.
__device__ __forceinline__ float finite_or_zero(float max_scaled) { return max_scaled == kNegInf ? 0.0f : max_scaled; }

template <int kRows>
struct OnlineSoftmax {
  float row_max[kRows];  // running max of y (see score_transform.h), -inf while the row saw no key
  float row_sum[kRows];  // this thread's share of the running sum of exp2(score * log2e - max)

  __device__ __forceinline__ OnlineSoftmax() {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      row_max[r] = kNegInf;
      row_sum[r] = 0.0f;
    }
  }

  // scores: (rows, cols) view of y for one key block, replaced by the unnormalised probabilities.
  // acc_o: (rows, cols) view of the output accumulator, rescaled to the new row max.
  template <typename Scores, typename Output>
  __device__ __forceinline__ void update(Scores& scores, Output& acc_o, float score_scale_log2) {
    static_assert(decltype(size<0>(scores))::value == kRows);
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      float block_max = row_max[r];
      CUTE_UNROLL
      for (int c = 0; c < size<1>(scores); ++c) block_max = fmaxf(block_max, scores(r, c));
      block_max = quad_max(block_max);
      const float max_scaled = finite_or_zero(block_max * score_scale_log2);
      const float correction = exp2f(row_max[r] * score_scale_log2 - max_scaled);
      row_max[r] = block_max;
      CUTE_UNROLL
      for (int c = 0; c < size<1>(acc_o); ++c) acc_o(r, c) *= correction;
      float sum = 0.0f;
      CUTE_UNROLL
      for (int c = 0; c < size<1>(scores); ++c) {
        const float prob = exp2f(scores(r, c) * score_scale_log2 - max_scaled);
        scores(r, c) = prob;
        sum += prob;
      }
      row_sum[r] = row_sum[r] * correction + sum;
    }
  }

  // Divides the output by the row sums and returns the natural-log lse of each row (-inf, with o = 0, for rows that
  // saw no key).
  template <typename Output>
  __device__ __forceinline__ void finalize(Output& acc_o, float score_scale, float (&lse)[kRows]) {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const float sum = quad_sum(row_sum[r]);
      const bool empty = !(sum > 0.0f);
      const float inv_sum = empty ? 0.0f : 1.0f / sum;
      lse[r] = empty ? kNegInf : row_max[r] * score_scale + __logf(sum);
      CUTE_UNROLL
      for (int c = 0; c < size<1>(acc_o); ++c) acc_o(r, c) *= inv_sum;
    }
  }
};

}  // namespace jax_flash::sm80
