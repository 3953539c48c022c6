// Dispatch of the Hopper backward: dtype x compiled head-dim tile (head_dim_tiles.h) -> a configuration.
#include "sm90/flash_bwd_sm90.h"

#include <cutlass/numeric_types.h>

#include "sm90/flash_bwd_launch.h"
#include "sm90/flash_bwd_tile_configs.h"
#include "sm90/head_dim_tiles.h"

namespace jax_flash::sm90 {
namespace {

template <class Element>
cudaError_t launch_dtype(const AttentionParams& p, const BwdBuffers& b, int num_sms, cudaStream_t stream) {
  switch (compiled_head_dim_tile(p.head_dim)) {
#if JAX_FLASH_SM90_TILE_64
    case 64:
      return launch_flash_bwd<BwdHdim64<Element>>(p, b, num_sms, stream);
#endif
#if JAX_FLASH_SM90_TILE_128
    case 128:
      return launch_flash_bwd<BwdHdim128<Element>>(p, b, num_sms, stream);
#endif
#if JAX_FLASH_SM90_TILE_256
    case 256:
      return launch_flash_bwd<BwdHdim256<Element>>(p, b, num_sms, stream);
#endif
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

bool flash_bwd_sm90_supports(const AttentionParams& p, DType dtype) {
  // The forward's conditions (dtype, head-dim granularity and compiled tile, TMA and int32 limits): the backward has
  // configurations for the same head-dim tiles.
  return flash_fwd_sm90_supports(p, dtype);
}

cudaError_t run_flash_bwd_sm90(const AttentionParams& p, DType dtype, const BwdBuffers& buffers, int num_sms,
                               cudaStream_t stream) {
  if (!flash_bwd_sm90_supports(p, dtype) || num_sms <= 0) return cudaErrorInvalidValue;
  if (dtype == DType::kBFloat16) return launch_dtype<cutlass::bfloat16_t>(p, buffers, num_sms, stream);
  return launch_dtype<cutlass::half_t>(p, buffers, num_sms, stream);
}

}  // namespace jax_flash::sm90
