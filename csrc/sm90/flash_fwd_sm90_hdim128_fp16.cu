// Kernel configurations of head-dim tile 128, fp16 (one file per tile and dtype keeps parallel builds balanced).
#include "sm90/flash_fwd_launch_template.h"
#include "sm90/tile_configs.h"

namespace jax_flash::sm90 {

template cudaError_t launch_flash_fwd<Hdim128Keys176<cutlass::half_t>>(
    const AttentionParams&, const void*, const void*, const void*, void*, float*, int*, int, cudaStream_t);
template cudaError_t launch_flash_fwd<Hdim128Keys128<cutlass::half_t>>(
    const AttentionParams&, const void*, const void*, const void*, void*, float*, int*, int, cudaStream_t);

}  // namespace jax_flash::sm90
