// Host launcher of the backward pass for one (head dim, element type): preprocess, main kernel, postprocess, all on
// the caller's stream; instantiated by kernel_instance.cu.in.
#pragma once

#include <algorithm>

#include "sm80/backward_kernel.h"
#include "sm80/backward_postprocess.h"
#include "sm80/backward_preprocess.h"
#include "sm80/kernel_params.h"
#include "sm80/kernel_traits.h"
#include "sm80/launch_config.h"

namespace jax_flash::sm80 {

// Blocks per SM for the grid-stride postprocess: enough to saturate memory bandwidth.
constexpr int kPostprocessBlocksPerSm = 8;

template <int kHeadDim, ElementKind kKind>
int backward_smem_bytes() {
  return BackwardTraits<kHeadDim, kKind>::kSmemBytes;
}

template <int kHeadDim, ElementKind kKind>
cudaError_t run_backward(const BackwardArgs& args, const LaunchContext& ctx) {
  using Traits = BackwardTraits<kHeadDim, kKind>;
  using Element = typename Traits::Element;
  const AttentionParams& p = args.params;

  const int64_t rows = p.batch * p.seqlen_q * p.heads_q;
  backward_preprocess_kernel<Element>
      <<<unsigned(ceil_div(rows, kPreprocessRowsPerBlock)), kPreprocessThreads, 0, ctx.stream>>>(args);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;

  constexpr auto kernel = &backward_kernel<Traits>;
  if (cudaError_t err = allow_dynamic_smem<kernel>(Traits::kSmemBytes, ctx.device); err != cudaSuccess) return err;
  const dim3 grid(unsigned(ceil_div(p.seqlen_k, Traits::kBlockN)), unsigned(p.heads_k), unsigned(p.batch));
  kernel<<<grid, Traits::kThreads, Traits::kSmemBytes, ctx.stream>>>(args);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;

  const int64_t count8 = rows * p.head_dim / kElemsPer16Bytes;
  const int64_t blocks = std::min<int64_t>(ceil_div(count8, kPostprocessThreads),
                                           int64_t(ctx.sm_count) * kPostprocessBlocksPerSm);
  backward_postprocess_kernel<Element><<<unsigned(blocks), kPostprocessThreads, 0, ctx.stream>>>(
      args.dq_accum, static_cast<Element*>(args.dq), count8, p.softmax_scale);
  return cudaGetLastError();
}

}  // namespace jax_flash::sm80
