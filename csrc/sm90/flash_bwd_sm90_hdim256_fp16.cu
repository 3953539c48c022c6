// Backward kernel configuration of head-dim tile 256, fp16 (one file per tile and dtype keeps parallel builds balanced).
#include "sm90/flash_bwd_launch_template.h"
#include "sm90/flash_bwd_tile_configs.h"

namespace jax_flash::sm90 {

template cudaError_t launch_flash_bwd<BwdHdim256<cutlass::half_t>>(const AttentionParams&, const BwdBuffers&, int,
                                                                 cudaStream_t);

}  // namespace jax_flash::sm90
