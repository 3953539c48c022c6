// The head-dim tiles of the Hopper kernels (the forward and the backward have configurations for the same ones) and
// which of them this build compiled: the build defines JAX_FLASH_SM90_TILE_<d>=1 for each tile d it compiles
// (flash_fwd_sm90_hdim<d>_*.cu and flash_bwd_sm90_hdim<d>_*.cu). A head dim runs in the smallest compiled tile that
// holds it.
#pragma once

#include <cstdint>

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

constexpr int kHeadDimTiles[] = {64, 128, 256};
constexpr bool kHeadDimTileCompiled[] = {JAX_FLASH_SM90_TILE_64, JAX_FLASH_SM90_TILE_128, JAX_FLASH_SM90_TILE_256};
constexpr int kNumHeadDimTiles = sizeof(kHeadDimTiles) / sizeof(kHeadDimTiles[0]);
static_assert(sizeof(kHeadDimTileCompiled) / sizeof(kHeadDimTileCompiled[0]) == kNumHeadDimTiles);

// The smallest compiled head-dim tile that holds head_dim, or 0.
inline int compiled_head_dim_tile(int64_t head_dim) {
  for (int i = 0; i < kNumHeadDimTiles; ++i)
    if (kHeadDimTileCompiled[i] && head_dim <= kHeadDimTiles[i]) return kHeadDimTiles[i];
  return 0;
}

}  // namespace jax_flash::sm90
