// Dispatch of the Hopper backward: dtype x head-dim tile -> a configuration. The build defines
// JAX_FLASH_SM90_TILE_<d>=1 for each head-dim tile it compiles (flash_bwd_sm90_hdim<d>_*.cu for d in 64, 128, 256).
#include "sm90/flash_bwd_sm90.h"

#include <cutlass/numeric_types.h>

#include "sm90/flash_bwd_launch.h"
#include "sm90/flash_bwd_tile_configs.h"

#ifndef JAX_FLASH_SM90_TILE_64
#define JAX_FLASH_SM90_TILE_64 0
#endif
#ifndef JAX_FLASH_SM90_TILE_128
#define JAX_FLASH_SM90_TILE_128 0
#endif
#ifndef JAX_FLASH_SM90_TILE_256
#define JAX_FLASH_SM90_TILE_256 0
#endif

namespace jax_flash::sm90 {
namespace {

constexpr bool kBwdTileCompiled[] = {JAX_FLASH_SM90_TILE_64, JAX_FLASH_SM90_TILE_128, JAX_FLASH_SM90_TILE_256};
constexpr int kNumBwdTiles = sizeof(kBwdHeadDimTiles) / sizeof(kBwdHeadDimTiles[0]);
static_assert(sizeof(kBwdTileCompiled) / sizeof(kBwdTileCompiled[0]) == kNumBwdTiles);

// The smallest compiled backward head-dim tile that holds head_dim, or 0.
int bwd_head_dim_tile(int64_t head_dim) {
  for (int i = 0; i < kNumBwdTiles; ++i)
    if (kBwdTileCompiled[i] && head_dim <= kBwdHeadDimTiles[i]) return kBwdHeadDimTiles[i];
  return 0;
}

template <class Element>
cudaError_t launch_dtype(const AttentionParams& p, const BwdBuffers& b, int num_sms, cudaStream_t stream) {
  switch (bwd_head_dim_tile(p.head_dim)) {
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
  // The forward's conditions (dtype, head-dim granularity, TMA and int32 limits), for the backward's tiles.
  return flash_fwd_sm90_supports(p, dtype) && bwd_head_dim_tile(p.head_dim) != 0;
}

cudaError_t run_flash_bwd_sm90(const AttentionParams& p, DType dtype, const BwdBuffers& buffers, int num_sms,
                               cudaStream_t stream) {
  if (!flash_bwd_sm90_supports(p, dtype) || num_sms <= 0) return cudaErrorInvalidValue;
  if (dtype == DType::kBFloat16) return launch_dtype<cutlass::bfloat16_t>(p, buffers, num_sms, stream);
  return launch_dtype<cutlass::half_t>(p, buffers, num_sms, stream);
}

}  // namespace jax_flash::sm90
