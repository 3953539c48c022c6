// Launching one backward kernel configuration (a BwdKernelTraits): preprocess, main kernel, postprocess. Defined in
// flash_bwd_launch_template.h and instantiated per configuration in the flash_bwd_sm90_hdim*.cu files.
#pragma once

#include <cuda_runtime.h>

#include "common/attention_params.h"
#include "sm90/flash_bwd_sm90.h"

namespace jax_flash::sm90 {

template <class Traits>
cudaError_t launch_flash_bwd(const AttentionParams& p, const BwdBuffers& buffers, int num_sms, cudaStream_t stream);

}  // namespace jax_flash::sm90
