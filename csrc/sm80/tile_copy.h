// Moves tiles between global and shared memory with 16-byte accesses, predicated on the rows and columns that exist:
// partial tiles (the last block of a sequence, head dims below the instantiated one) load as if zero-padded and store
// only what is in bounds. cp.async needs cp_async_fence() / cp_async_wait<N>() around it (see the kernels).
#pragma once

#include <cute/tensor.hpp>

#include "common/mask.h"
#include "sm80/kernel_params.h"

namespace jax_flash::sm80 {

using namespace cute;

// Per-thread column predicate of a partitioned tile: column chunk k of this thread is < head_dim. Column positions
// do not depend on the row, so one predicate per chunk serves every row.
template <typename Coords>
__device__ __forceinline__ auto column_predicate(const Coords& coords, int64_t head_dim) {
  const int dim = int(head_dim);  // <= 256: the handlers check
  Tensor pred = make_tensor<bool>(make_shape(size<2>(coords)));
  CUTE_UNROLL
  for (int k = 0; k < size(pred); ++k) pred(k) = get<1>(coords(0, 0, k)) < dim;
  return pred;
}

// src (global) -> dst (shared); rows >= valid_rows and columns whose predicate is off are zero-filled, so that
// stale shared memory (possibly NaN) never enters an MMA. Tiles whose rows and columns all exist for this thread
// (every block but the last of a sequence, at an instantiated head dim) take one branch to unpredicated copies; the
// row test is 32-bit (tile rows <= kMaxTileRows), which keeps 64-bit compares and their registers out of the loops.
template <typename TiledCopy, typename Src, typename Dst, typename Coords, typename ColPred>
__device__ __forceinline__ void load_tile(const TiledCopy& copy, const Src& src, Dst&& dst, const Coords& coords,
                                          const ColPred& col_ok, int64_t valid_rows) {
  constexpr int kRowChunks = decltype(size<1>(src))::value;
  constexpr int kColChunks = decltype(size<2>(src))::value;
  const int rows = int(jf_min(valid_rows, kMaxTileRows));
  bool whole = get<0>(coords(0, kRowChunks - 1, 0)) < rows;  // row coordinates grow with the chunk index
  CUTE_UNROLL
  for (int k = 0; k < kColChunks; ++k) whole = whole && col_ok(k);
  if (whole) {
    CUTE_UNROLL
    for (int m = 0; m < kRowChunks; ++m) {
      CUTE_UNROLL
      for (int k = 0; k < kColChunks; ++k) cute::copy(copy, src(_, m, k), dst(_, m, k));
    }
    return;
  }
  CUTE_UNROLL
  for (int m = 0; m < kRowChunks; ++m) {
    const bool row_ok = get<0>(coords(0, m, 0)) < rows;
    CUTE_UNROLL
    for (int k = 0; k < kColChunks; ++k) {
      if (row_ok && col_ok(k)) {
        cute::copy(copy, src(_, m, k), dst(_, m, k));
      } else {
        cute::clear(dst(_, m, k));
      }
    }
  }
}

// src (registers or shared) -> dst (global), in-bounds rows and columns only.
template <typename TiledCopy, typename Src, typename Dst, typename Coords, typename ColPred>
__device__ __forceinline__ void store_tile(const TiledCopy& copy, const Src& src, Dst&& dst, const Coords& coords,
                                           const ColPred& col_ok, int64_t valid_rows) {
  const int rows = int(jf_min(valid_rows, kMaxTileRows));
  CUTE_UNROLL
  for (int m = 0; m < size<1>(src); ++m) {
    if (get<0>(coords(0, m, 0)) >= rows) continue;
    CUTE_UNROLL
    for (int k = 0; k < size<2>(src); ++k) {
      if (col_ok(k)) cute::copy(copy, src(_, m, k), dst(_, m, k));
    }
  }
}

}  // namespace jax_flash::sm80
