// Backward postprocess: dq = dq_accum * softmax_scale in the input dtype (dq_accum holds the gradient of q.k summed
// over key blocks, without the factor softmax_scale).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "sm90/flash_bwd_preprocess.h"

namespace jax_flash::sm90 {

constexpr int kPostprocessThreads = 256;

// count8: number of elements / 8 (a multiple of the head dim, itself a multiple of 8).
template <class Element>
__global__ void __launch_bounds__(kPostprocessThreads)
    flash_bwd_postprocess_kernel(const float* dq_accum, Element* dq, int64_t count8, float scale) {
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

}  // namespace jax_flash::sm90
