// Host launcher of the forward kernel for one (head dim, element type); instantiated by kernel_instance.cu.in.
#pragma once

#include "sm80/forward_kernel.h"
#include "sm80/kernel_params.h"
#include "sm80/kernel_traits.h"
#include "sm80/launch_config.h"

namespace jax_flash::sm80 {

template <int kHeadDim, ElementKind kKind>
int forward_smem_bytes() {
  return ForwardTraits<kHeadDim, kKind>::kSmemBytes;
}

template <int kHeadDim, ElementKind kKind>
cudaError_t run_forward(const ForwardArgs& args, const LaunchContext& ctx) {
  using Traits = ForwardTraits<kHeadDim, kKind>;
  constexpr auto kernel = &forward_kernel<Traits>;
  if (cudaError_t err = allow_dynamic_smem<kernel>(Traits::kSmemBytes, ctx.device); err != cudaSuccess) return err;
  const AttentionParams& p = args.params;
  const dim3 grid(unsigned(ceil_div(p.seqlen_q, Traits::kBlockM)), unsigned(p.heads_q), unsigned(p.batch));
  kernel<<<grid, Traits::kThreads, Traits::kSmemBytes, ctx.stream>>>(args);
  return cudaGetLastError();
}

}  // namespace jax_flash::sm80
