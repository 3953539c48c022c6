// Backward preprocess of every CUDA family, one pass over dout and o before the main kernel:
//   softmax_d = rowsum(dout * o) - dlse   [B, Hq, Sq] (the lse cotangent enters the gradient through it)
//   dq_accum  = 0                         [B, Sq, Hq, D] float32 (the main kernel adds into it)
//   dq_semaphore = 0                      [B, Hq, Sq] int32 (deterministic mode only; else null)
// CUDA only: included by the sm80 and sm90 backward launchers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/attention_params.h"

namespace jax_flash {

// A group of kPreprocessThreadsPerRow threads reads one (position, head) row of dout and o with 16-byte accesses;
// the head dim is a multiple of 8, so no access straddles a row.
constexpr int kPreprocessThreads = 256;
constexpr int kPreprocessThreadsPerRow = 8;
constexpr int kPreprocessRowsPerBlock = kPreprocessThreads / kPreprocessThreadsPerRow;
constexpr int kElementsPer16Bytes = 8;

template <class Element>
__global__ void __launch_bounds__(kPreprocessThreads)
    backward_preprocess_kernel(AttentionParams p, const Element* dout, const Element* o, const float* dlse,
                               float* softmax_d, float* dq_accum, int* dq_semaphore) {
  static_assert(sizeof(Element) * kElementsPer16Bytes == 16);
  const int64_t total_rows = p.batch * p.seqlen_q * p.heads_q;
  // Rows in [B, Sq, Hq] order, their order in memory.
  const int64_t row = int64_t(blockIdx.x) * kPreprocessRowsPerBlock + threadIdx.x / kPreprocessThreadsPerRow;
  const int lane = threadIdx.x % kPreprocessThreadsPerRow;
  float dot = 0.f;
  if (row < total_rows) {
    for (int64_t c = lane * kElementsPer16Bytes; c < p.head_dim; c += kPreprocessThreadsPerRow * kElementsPer16Bytes) {
      const uint4 dout_bits = *reinterpret_cast<const uint4*>(dout + row * p.head_dim + c);
      const uint4 o_bits = *reinterpret_cast<const uint4*>(o + row * p.head_dim + c);
      const Element* dout_values = reinterpret_cast<const Element*>(&dout_bits);
      const Element* o_values = reinterpret_cast<const Element*>(&o_bits);
#pragma unroll
      for (int j = 0; j < kElementsPer16Bytes; ++j) dot += float(dout_values[j]) * float(o_values[j]);
      float4* zero = reinterpret_cast<float4*>(dq_accum + row * p.head_dim + c);
      zero[0] = make_float4(0.f, 0.f, 0.f, 0.f);
      zero[1] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
  }
#pragma unroll
  for (int offset = kPreprocessThreadsPerRow / 2; offset > 0; offset /= 2)
    dot += __shfl_xor_sync(0xffffffffu, dot, offset);
  if (row < total_rows && lane == 0) {
    const int64_t head = row % p.heads_q;
    const int64_t position = (row / p.heads_q) % p.seqlen_q;
    const int64_t batch = row / (p.heads_q * p.seqlen_q);
    const int64_t stat = (batch * p.heads_q + head) * p.seqlen_q + position;
    softmax_d[stat] = dot - dlse[stat];
    if (dq_semaphore != nullptr) dq_semaphore[stat] = 0;
  }
}

// Enqueues the preprocess on `stream` (nothing when there are no query rows).
template <class Element>
cudaError_t launch_backward_preprocess(const AttentionParams& p, const void* dout, const void* o, const float* dlse,
                                       float* softmax_d, float* dq_accum, int* dq_semaphore, cudaStream_t stream) {
  const int64_t rows = p.batch * p.seqlen_q * p.heads_q;
  if (rows == 0) return cudaSuccess;
  backward_preprocess_kernel<Element>
      <<<unsigned((rows + kPreprocessRowsPerBlock - 1) / kPreprocessRowsPerBlock), kPreprocessThreads, 0, stream>>>(
          p, static_cast<const Element*>(dout), static_cast<const Element*>(o), dlse, softmax_d, dq_accum,
          dq_semaphore);
  return cudaGetLastError();
}

}  // namespace jax_flash
