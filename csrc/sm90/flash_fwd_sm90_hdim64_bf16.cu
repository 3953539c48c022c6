// Kernel configurations of head-dim tile 64, bf16 (one file per tile and dtype keeps parallel builds balanced).
#include "sm90/flash_fwd_launch_template.h"
#include "sm90/tile_configs.h"

namespace jax_flash::sm90 {

template cudaError_t launch_flash_fwd<Hdim64Rows192<cutlass::bfloat16_t>>(
    const AttentionParams&, const void*, const void*, const void*, void*, float*, int*, int, cudaStream_t);
template cudaError_t launch_flash_fwd<Hdim64Rows128<cutlass::bfloat16_t>>(
    const AttentionParams&, const void*, const void*, const void*, void*, float*, int*, int, cudaStream_t);

}  // namespace jax_flash::sm90
