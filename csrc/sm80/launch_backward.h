// Host launcher of the backward pass for one (head dim, element type): preprocess, main kernel, postprocess, all on
// the caller's stream; instantiated by kernel_instance.cu.in.
#pragma once


#include "common/backward_postprocess.h"
#include "common/backward_preprocess.h"
#include "sm80/backward_kernel.h"
#include "sm80/kernel_params.h"
#include "sm80/kernel_traits.h"
#include "sm80/launch_config.h"

namespace jax_flash::sm80 {

template <int kHeadDim, ElementKind kKind>
int backward_smem_bytes() {
  return BackwardTraits<kHeadDim, kKind>::kSmemBytes;
}

template <int kHeadDim, ElementKind kKind>
cudaError_t run_backward(const BackwardArgs& args, const LaunchContext& ctx) {
  using Traits = BackwardTraits<kHeadDim, kKind>;
  using Element = typename Traits::Element;
  const AttentionParams& p = args.params;

  if (cudaError_t err = launch_backward_preprocess<Element>(p, args.dout, args.o, args.dlse, args.softmax_d,
                                                             args.dq_accum, args.dq_semaphore, ctx.stream);
      err != cudaSuccess)
    return err;

  constexpr auto kernel = &backward_kernel<Traits>;
  if (cudaError_t err = allow_dynamic_smem<kernel>(Traits::kSmemBytes, ctx.device); err != cudaSuccess) return err;
  const dim3 grid(unsigned(ceil_div(p.seqlen_k, Traits::kBlockN)), unsigned(p.heads_k), unsigned(p.batch));
  kernel<<<grid, Traits::kThreads, Traits::kSmemBytes, ctx.stream>>>(args);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;

  return launch_backward_postprocess<Element, DqAccumOrder::kWarpCoalesced>(p, args.dq_accum, args.dq, ctx.sm_count,
                                                                             ctx.stream);
}

}  // namespace jax_flash::sm80
