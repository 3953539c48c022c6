// Backward postprocess of every CUDA family: dq = dq_accum * softmax_scale in the input dtype (dq_accum holds the
// gradient of q.k summed over key blocks, without the factor softmax_scale). CUDA only.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/attention_params.h"
#include "common/backward_preprocess.h"

namespace jax_flash {

constexpr int kPostprocessThreads = 256;
// Blocks per SM for the grid-stride loop: enough to saturate memory bandwidth.
constexpr int kPostprocessBlocksPerSm = 8;

// count8: number of elements / 8 (a multiple of the head dim, itself a multiple of 8).
template <class Element>
__global__ void __launch_bounds__(kPostprocessThreads)
    backward_postprocess_kernel(const float* dq_accum, Element* dq, int64_t count8, float scale) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count8; i += int64_t(gridDim.x) * blockDim.x) {
    const float4 lo = reinterpret_cast<const float4*>(dq_accum)[2 * i];
    const float4 hi = reinterpret_cast<const float4*>(dq_accum)[2 * i + 1];
    const float in[kElementsPer16Bytes] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
    uint4 bits;
    Element* out = reinterpret_cast<Element*>(&bits);
#pragma unroll
    for (int j = 0; j < kElementsPer16Bytes; ++j) out[j] = Element(in[j] * scale);
    reinterpret_cast<uint4*>(dq)[i] = bits;
  }
}

// Enqueues the postprocess on `stream` (nothing when there are no query rows).
template <class Element>
cudaError_t launch_backward_postprocess(const AttentionParams& p, const float* dq_accum, void* dq, int sm_count,
                                        cudaStream_t stream) {
  const int64_t count8 = p.batch * p.seqlen_q * p.heads_q * p.head_dim / kElementsPer16Bytes;
  if (count8 == 0) return cudaSuccess;
  const int64_t blocks = std::min<int64_t>((count8 + kPostprocessThreads - 1) / kPostprocessThreads,
                                           int64_t(sm_count) * kPostprocessBlocksPerSm);
  backward_postprocess_kernel<Element><<<unsigned(blocks), kPostprocessThreads, 0, stream>>>(
      dq_accum, static_cast<Element*>(dq), count8, p.softmax_scale);
  return cudaGetLastError();
}

}  // namespace jax_flash
