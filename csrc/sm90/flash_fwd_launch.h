// Launching one forward kernel configuration (a FwdKernelTraits). Defined in flash_fwd_launch_template.h and
// instantiated per configuration in the flash_fwd_sm90_hdim*.cu files, so that callers compile no kernel.
#pragma once

#include <cuda_runtime.h>

#include "common/attention_params.h"

namespace jax_flash::sm90 {

// Causal or sliding-window problems have tiles of unequal work and always use the dynamic (longest-first)
// scheduler, which needs the tile counter.
inline bool has_window(const AttentionParams& p) {
  return p.window_left != kUnbounded || p.window_right != kUnbounded;
}

// `tile_counter`: null for the static schedule (CTA i takes tiles i, i + grid, ...); else one int of device memory
// (reset on `stream`) from which CTAs take tiles dynamically, longest first.
template <class Traits>
cudaError_t launch_flash_fwd(const AttentionParams& p, const void* q, const void* k, const void* v, void* o,
                             float* lse, int* tile_counter, int num_sms, cudaStream_t stream);

}  // namespace jax_flash::sm90
