// Online softmax over the key blocks of one query tile, on wgmma accumulator fragments.
//
// Scores stay in raw units; the running row max m is kept raw too, and p = exp2(s * c - m * c) with
// c = log2(e) * scale is one FFMA and one EX2 per score. Each thread keeps partial row sums over its own columns;
// the four threads that share a row reduce them once, in finalize(). O is rescaled by exp2((m_old - m_new) c)
// and divided by the row sum at the end. A row that has seen only masked scores keeps m = -inf and sum 0, and
// ends with O = 0 and lse = -inf (no -inf - -inf anywhere).
//
// The offset m need not be the exact running max, only close enough that exp2 cannot overflow: it moves only when
// a block's max exceeds it by more than kMaxGrowthLog2 (in exponent units), so p <= 2^kMaxGrowthLog2, harmless in
// fp32 sums and in the 16-bit P (same relative precision at any magnitude). Past the first blocks of a row the
// max almost never grows that much, the factor is exactly 1, and the rescale of O is skipped (rescale_needed).
#pragma once

#include <cmath>

#include <cute/tensor.hpp>

#include "sm90/fragments.h"

namespace jax_flash::sm90 {

using namespace cute;

constexpr float kLog2e = 1.4426950408889634f;
// How far (log2 units) a row's scores may exceed its exponent offset before the offset moves (see above).
constexpr float kMaxGrowthLog2 = 8.f;
constexpr float kLn2 = 0.6931471805599453f;
// The threads of a quad (lanes 4i..4i+3) hold the columns of the same two accumulator rows.
constexpr int kThreadsPerRow = 4;

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float fast_tanh(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};

template <class Op>
__device__ __forceinline__ float quad_allreduce(float x, Op op) {
  CUTE_UNROLL
  for (int offset = 1; offset < kThreadsPerRow; offset *= 2) x = op(x, __shfl_xor_sync(0xffffffff, x, offset));
  return x;
}

// softcap: s <- softcap * tanh(s * scale / softcap). The caller keeps tanh(s * prescale) with
// prescale = scale / softcap and folds softcap into the exponent scale (log2(e) * softcap).
template <class Frag>
__device__ __forceinline__ void apply_softcap(Frag& scores, float prescale) {
  CUTE_UNROLL
  for (int i = 0; i < size(scores); ++i) scores(i) = fast_tanh(scores(i) * prescale);
}

template <int kRows>
struct OnlineSoftmax {
  float row_max[kRows];
  float row_sum[kRows];  // this thread's columns only, until finalize()
  const float scale_log2;
  const float max_growth;  // kMaxGrowthLog2 in raw score units

  __device__ __forceinline__ explicit OnlineSoftmax(float scale_log2_)
      : scale_log2(scale_log2_), max_growth(kMaxGrowthLog2 / scale_log2_) {}

  // First key block of a tile: scores -> p in place.
  template <class Frag>
  __device__ __forceinline__ void first_block(Frag& scores) {
    Tensor s = make_tensor(scores.data(), accumulator_rows_cols(scores.layout()));
    static_assert(decltype(size<0>(s))::value == kRows);
    CUTE_UNROLL
    for (int m = 0; m < kRows; ++m) {
      row_max[m] = quad_allreduce(thread_row_max(s, m, -INFINITY), MaxOp{});
      row_sum[m] = 0.f;
    }
    exponentiate(s);
  }

  // A later key block: scores -> p in place; o_scale[m] receives the factor to rescale row m of O by (exactly 1
  // when the offset stays).
  template <class Frag>
  __device__ __forceinline__ void next_block(Frag& scores, float (&o_scale)[kRows]) {
    Tensor s = make_tensor(scores.data(), accumulator_rows_cols(scores.layout()));
    static_assert(decltype(size<0>(s))::value == kRows);
    CUTE_UNROLL
    for (int m = 0; m < kRows; ++m) {
      const float previous = row_max[m];
      const float block_max = quad_allreduce(thread_row_max(s, m, -INFINITY), MaxOp{});
      // From -inf (only masked scores so far) any finite max moves the offset, and the factor is exp2(-inf) = 0.
      if (block_max > previous + max_growth) {
        row_max[m] = block_max;
        o_scale[m] = fast_exp2((previous - block_max) * scale_log2);
        row_sum[m] *= o_scale[m];
      } else {
        o_scale[m] = 1.f;
      }
    }
    exponentiate(s);
  }

  // False when every factor is 1, so that rescaling by them would change nothing.
  __device__ __forceinline__ static bool rescale_needed(const float (&factor)[kRows]) {
    bool needed = false;
    CUTE_UNROLL
    for (int m = 0; m < kRows; ++m) needed |= factor[m] != 1.f;
    return needed;
  }

  // After the last block: inv_sum[m] = 1 / (row sum), 0 for a row with no visible key; lse[m] = natural-log
  // log-sum-exp of the scaled scores of row m, -inf for such a row.
  __device__ __forceinline__ void finalize(float (&inv_sum)[kRows], float (&lse)[kRows]) {
    CUTE_UNROLL
    for (int m = 0; m < kRows; ++m) {
      const float sum = quad_allreduce(row_sum[m], SumOp{});
      const bool empty = sum == 0.f;
      inv_sum[m] = empty ? 0.f : __frcp_rn(sum);
      lse[m] = empty ? -INFINITY : row_max[m] * (scale_log2 * kLn2) + __logf(sum);
    }
  }

  template <class Frag>
  __device__ __forceinline__ static void rescale(Frag& acc_o, const float (&factor)[kRows]) {
    Tensor o = make_tensor(acc_o.data(), accumulator_rows_cols(acc_o.layout()));
    CUTE_UNROLL
    for (int m = 0; m < kRows; ++m) {
      CUTE_UNROLL
      for (int n = 0; n < size<1>(o); ++n) o(m, n) *= factor[m];
    }
  }

 private:
  // Several independent FMNMX chains, combined at the end: one chain over every column of the row is
  // latency-bound (Nsight Compute put about 9% of the consumer warps' stall samples on it).
  static constexpr int kMaxChains = 4;

  template <class RowsCols>
  __device__ __forceinline__ static float thread_row_max(const RowsCols& s, int m, float init) {
    static_assert(decltype(size<1>(s))::value % kMaxChains == 0);
    float mx[kMaxChains];
    CUTE_UNROLL
    for (int c = 0; c < kMaxChains; ++c) mx[c] = init;
    CUTE_UNROLL
    for (int n = 0; n < size<1>(s); ++n) mx[n % kMaxChains] = fmaxf(mx[n % kMaxChains], s(m, n));
    CUTE_UNROLL
    for (int width = kMaxChains / 2; width > 0; width /= 2) {
      CUTE_UNROLL
      for (int c = 0; c < width; ++c) mx[c] = fmaxf(mx[c], mx[c + width]);
    }
    return mx[0];
  }

  // The max used as exponent offset: 0 while the row has only masked scores, so that exp2(-inf - 0) = 0.
  __device__ __forceinline__ float finite_max(int m) const { return row_max[m] == -INFINITY ? 0.f : row_max[m]; }

  template <class RowsCols>
  __device__ __forceinline__ void exponentiate(RowsCols& s) {
    CUTE_UNROLL
    for (int m = 0; m < kRows; ++m) {
      const float offset = finite_max(m) * scale_log2;
      CUTE_UNROLL
      for (int n = 0; n < size<1>(s); ++n) {
        s(m, n) = fast_exp2(s(m, n) * scale_log2 - offset);
        row_sum[m] += s(m, n);
      }
    }
  }
};

}  // namespace jax_flash::sm90
