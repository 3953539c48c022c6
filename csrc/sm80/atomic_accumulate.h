// Adds an MMA accumulator tile into float32 global memory with atomics (the backward's dQ: every key block of every
// CTA contributes to the same rows), in the quad-interleaved column order of common/dq_accum_order.h: the 4 values
// a thread holds in one row of a 16-column chunk go out as one 16-byte atomic where the hardware has it (sm90).
#pragma once

#include <cute/tensor.hpp>

#include "common/dq_accum_order.h"

namespace jax_flash::sm80 {

using namespace cute;

// One row's share of a chunk: (v0, v1) at columns 2t, 2t+1 of its first 8-column half, (w0, w1) at 8 + 2t, 9 + 2t.
// `at` points at position 4t of the chunk, where they are stored as v0, v1, w0, w1.
__device__ __forceinline__ void atomic_add_quad(float* at, float v0, float v1, float w0, float w1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float4*>(at), make_float4(v0, v1, w0, w1));
#else
  atomicAdd(at, v0);
  atomicAdd(at + 1, v1);
  atomicAdd(at + 2, w0);
  atomicAdd(at + 3, w1);
#endif
}

// gAcc: the accumulator's partition of the global tile (same layout as `acc`, (4, MMA_M, MMA_N)); coords: (row, col)
// within the tile of each entry. The TiledMMA must give each warp adjacent 8-column atoms (WarpTiledMma does), so
// that atoms 2j and 2j + 1 of a thread are the two halves of one 16-column chunk. Rows >= valid_rows and columns
// >= valid_cols (a multiple of 8) are skipped.
template <int kRows, int kCols, typename Global, typename Acc, typename Coords>
__device__ __forceinline__ void atomic_add_tile(Global&& gAcc, const Acc& acc, const Coords& coords, int valid_rows,
                                                int valid_cols) {
  // In an SM80 accumulator atom, entries 2r and 2r+1 are columns c and c+1 of row r (r = 0: row, r = 1: row + 8).
  static_assert(decltype(size<0>(acc))::value == 4);
  static_assert(decltype(size<2>(acc))::value % 2 == 0, "atoms pair up into 16-column chunks");
  static_assert(kCols % kDqChunkCols == 0);
  const bool full_tile = valid_rows >= kRows && valid_cols >= kCols;
  CUTE_UNROLL
  for (int m = 0; m < size<1>(acc); ++m) {
    CUTE_UNROLL
    for (int n = 0; n < size<2>(acc); n += 2) {
      CUTE_UNROLL
      for (int r = 0; r < 2; ++r) {
        const int row = get<0>(coords(2 * r, m, n));
        const int col = get<1>(coords(2 * r, m, n));  // chunk start + 2t
        if (!full_tile && row >= valid_rows) continue;
        if (full_tile || dq_chunk_is_full(col, valid_cols)) {
          float* at = &gAcc(2 * r, m, n) + col % (kDqChunkCols / 2);  // position 4t of the chunk
          atomic_add_quad(at, acc(2 * r, m, n), acc(2 * r + 1, m, n), acc(2 * r, m, n + 1), acc(2 * r + 1, m, n + 1));
        } else if (col < valid_cols) {  // the first half of a trailing half chunk, in natural order
          atomicAdd(&gAcc(2 * r, m, n), acc(2 * r, m, n));
          atomicAdd(&gAcc(2 * r + 1, m, n), acc(2 * r + 1, m, n));
        }
      }
    }
  }
}

}  // namespace jax_flash::sm80
