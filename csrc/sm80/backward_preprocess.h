// Backward preprocessing, one pass over dout and o before the main kernel:
//   softmax_d = rowsum(dout * o) - dlse   ([B, Hq, Sq]; the lse cotangent enters the gradient through it)
//   dq_accum = 0                          ([B, Sq, Hq, D], float32; the main kernel adds into it with atomics)
//   dq_semaphore = 0                      ([B, Hq, Sq], int32, deterministic mode only)
#pragma once

#include <cuda_runtime.h>

#include <cute/tensor.hpp>

#include "sm80/kernel_params.h"

namespace jax_flash::sm80 {

// A group of kPreprocessThreadsPerRow threads reads one row of dout and o (16 bytes per access); the head dim is a
// multiple of 8, so 16-byte accesses never straddle a row.
constexpr int kPreprocessThreads = 256;
constexpr int kPreprocessThreadsPerRow = 8;
constexpr int kPreprocessRowsPerBlock = kPreprocessThreads / kPreprocessThreadsPerRow;
constexpr int kElemsPer16Bytes = 8;

template <typename Element>
__global__ void __launch_bounds__(kPreprocessThreads) backward_preprocess_kernel(const BackwardArgs args) {
  static_assert(sizeof(Element) * kElemsPer16Bytes == 16);
  const AttentionParams& p = args.params;
  const int64_t total_rows = p.batch * p.seqlen_q * p.heads_q;
  // Rows in [B, Sq, Hq] order, which is also their order in memory.
  const int64_t row = int64_t(blockIdx.x) * kPreprocessRowsPerBlock + threadIdx.x / kPreprocessThreadsPerRow;
  const int lane = threadIdx.x % kPreprocessThreadsPerRow;
  float dot = 0.0f;
  if (row < total_rows) {
    const Element* dout = static_cast<const Element*>(args.dout) + row * p.head_dim;
    const Element* o = static_cast<const Element*>(args.o) + row * p.head_dim;
    float* dq_accum = args.dq_accum + row * p.head_dim;
    for (int64_t c = lane * kElemsPer16Bytes; c < p.head_dim; c += kPreprocessThreadsPerRow * kElemsPer16Bytes) {
      const uint4 dout_bits = *reinterpret_cast<const uint4*>(dout + c);
      const uint4 o_bits = *reinterpret_cast<const uint4*>(o + c);
      const Element* dout_vals = reinterpret_cast<const Element*>(&dout_bits);
      const Element* o_vals = reinterpret_cast<const Element*>(&o_bits);
      CUTE_UNROLL
      for (int j = 0; j < kElemsPer16Bytes; ++j) dot += float(dout_vals[j]) * float(o_vals[j]);
      float4* zero_to = reinterpret_cast<float4*>(dq_accum + c);
      zero_to[0] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      zero_to[1] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  }
  CUTE_UNROLL
  for (int offset = kPreprocessThreadsPerRow / 2; offset > 0; offset /= 2)
    dot += __shfl_xor_sync(0xffffffffu, dot, offset);
  if (row < total_rows && lane == 0) {
    const int64_t head = row % p.heads_q;
    const int64_t position = (row / p.heads_q) % p.seqlen_q;
    const int64_t batch = row / (p.heads_q * p.seqlen_q);
    const int64_t stat = (batch * p.heads_q + head) * p.seqlen_q + position;
    args.softmax_d[stat] = dot - args.dlse[stat];
    if (args.dq_semaphore != nullptr) args.dq_semaphore[stat] = 0;
  }
}

}  // namespace jax_flash::sm80
