// Backward postprocessing: dq = dq_accum * softmax_scale in the input dtype (dq_accum holds dL/d(q.k) summed over
// key blocks, see backward_kernel.h).
#pragma once

#include <cuda_runtime.h>

#include <cute/tensor.hpp>

#include "sm80/backward_preprocess.h"

namespace jax_flash::sm80 {

constexpr int kPostprocessThreads = 256;

// count8: number of elements / 8 (every tensor here has a multiple of 8 elements: the head dim is one).
template <typename Element>
__global__ void __launch_bounds__(kPostprocessThreads)
    backward_postprocess_kernel(const float* dq_accum, Element* dq, int64_t count8, float scale) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count8; i += int64_t(gridDim.x) * blockDim.x) {
    const float4 lo = reinterpret_cast<const float4*>(dq_accum)[2 * i];
    const float4 hi = reinterpret_cast<const float4*>(dq_accum)[2 * i + 1];
    uint4 bits;
    Element* out = reinterpret_cast<Element*>(&bits);
    const float in[kElemsPer16Bytes] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
    CUTE_UNROLL
    for (int j = 0; j < kElemsPer16Bytes; ++j) out[j] = Element(in[j] * scale);
    reinterpret_cast<uint4*>(dq)[i] = bits;
  }
}

}  // namespace jax_flash::sm80
