// Backward postprocess of every CUDA family: dq = dq_accum * softmax_scale in the input dtype (dq_accum holds the
// gradient of q.k summed over key blocks, without the factor softmax_scale, in the column order of
// common/dq_accum_order.h). CUDA only.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/attention_params.h"
#include "common/backward_preprocess.h"
#include "common/dq_accum_order.h"

namespace jax_flash {

constexpr int kPostprocessThreads = 256;
// Blocks per SM for the grid-stride loop: enough to saturate memory bandwidth.
constexpr int kPostprocessBlocksPerSm = 8;

// count8: number of elements / 8 (a multiple of the head dim, itself a multiple of 8). Each thread converts 8
// consecutive columns of one (batch, position, head) row: in natural order two float4 loads; in warp-coalesced order
// (common/dq_accum_order.h) four float2 pairs, wherever the order put them inside the row's 8 x 32 block.
template <class Element, DqAccumOrder kOrder>
__global__ void __launch_bounds__(kPostprocessThreads)
    backward_postprocess_kernel(const float* dq_accum, Element* dq, int64_t count8, int64_t seqlen, int heads,
                                int head_dim, float scale) {
  constexpr int kPairs = kElementsPer16Bytes / 2;
  const int groups_per_row = head_dim / kElementsPer16Bytes;
  const int64_t row_stride = int64_t(heads) * head_dim;  // from one sequence position to the next
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count8; i += int64_t(gridDim.x) * blockDim.x) {
    float in[kElementsPer16Bytes];
    const float* group = dq_accum + kElementsPer16Bytes * i;
    const int64_t row = i / groups_per_row;  // (batch, position, head)
    const int col = int(i - row * groups_per_row) * kElementsPer16Bytes;
    const int64_t position = (row / heads) % seqlen;
    if (kOrder == DqAccumOrder::kWarpCoalesced && dq_block_is_full(position, col, seqlen, head_dim)) {
      const int r = int(position % kDqBlockRows);
      const float* block = group - r * row_stride - col % kDqBlockCols;  // the block's (0, 0)
#pragma unroll
      for (int pair = 0; pair < kPairs; ++pair) {
        const DqSlot at = warp_coalesced_slot(r, col % kDqBlockCols + 2 * pair);
        const float2 v = *reinterpret_cast<const float2*>(block + at.row * row_stride + at.col);
        in[2 * pair] = v.x;
        in[2 * pair + 1] = v.y;
      }
    } else {
      const float4 lo = reinterpret_cast<const float4*>(group)[0];
      const float4 hi = reinterpret_cast<const float4*>(group)[1];
      in[0] = lo.x, in[1] = lo.y, in[2] = lo.z, in[3] = lo.w, in[4] = hi.x, in[5] = hi.y, in[6] = hi.z, in[7] = hi.w;
    }
    uint4 bits;
    Element* out = reinterpret_cast<Element*>(&bits);
#pragma unroll
    for (int j = 0; j < kElementsPer16Bytes; ++j) out[j] = Element(in[j] * scale);
    reinterpret_cast<uint4*>(dq)[i] = bits;
  }
}

// Enqueues the postprocess on `stream` (nothing when there are no query rows).
template <class Element, DqAccumOrder kOrder = DqAccumOrder::kNatural>
cudaError_t launch_backward_postprocess(const AttentionParams& p, const float* dq_accum, void* dq, int sm_count,
                                        cudaStream_t stream) {
  const int64_t count8 = p.batch * p.seqlen_q * p.heads_q * p.head_dim / kElementsPer16Bytes;
  if (count8 == 0) return cudaSuccess;
  const int64_t blocks = std::min<int64_t>((count8 + kPostprocessThreads - 1) / kPostprocessThreads,
                                           int64_t(sm_count) * kPostprocessBlocksPerSm);
  backward_postprocess_kernel<Element, kOrder><<<unsigned(blocks), kPostprocessThreads, 0, stream>>>(
      dq_accum, static_cast<Element*>(dq), count8, p.seqlen_q, int(p.heads_q), int(p.head_dim), p.softmax_scale);
  return cudaGetLastError();
}

}  // namespace jax_flash
