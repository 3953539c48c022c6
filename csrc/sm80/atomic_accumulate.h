// Adds an MMA accumulator tile into float32 global memory with atomics (the backward's dQ: every key block of every
// CTA contributes to the same rows), in the warp-coalesced order of common/dq_accum_order.h: a thread's 4 values of
// one row in a 16-column chunk go out as one 16-byte atomic (sm90), and a warp's 32 atomics fill 4 whole cache lines.
#pragma once

#include <cute/tensor.hpp>

#include "common/dq_accum_order.h"

namespace jax_flash::sm80 {

using namespace cute;

__device__ __forceinline__ void atomic_add4(float* at, float v0, float v1, float v2, float v3) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float4*>(at), make_float4(v0, v1, v2, v3));
#else
  atomicAdd(at, v0);
  atomicAdd(at + 1, v1);
  atomicAdd(at + 2, v2);
  atomicAdd(at + 3, v3);
#endif
}

// gAcc: the accumulator's partition of the global tile (same layout as `acc`, (4, MMA_M, MMA_N)), whose rows are
// row_stride floats apart; coords: (row, col) within the tile of each entry. The tile starts on a row that is a
// multiple of 8 and at column 0. The TiledMMA must give each warp adjacent 8-column atoms (WarpTiledMma does), so that
// atoms n and n + 1 (n even) of a thread are the two halves of one 16-column chunk. Rows >= valid_rows and columns
// >= valid_cols (a multiple of 8) are skipped.
template <int kRows, int kCols, typename Global, typename Acc, typename Coords>
__device__ __forceinline__ void atomic_add_tile(Global&& gAcc, const Acc& acc, const Coords& coords, int valid_rows,
                                                int valid_cols, int row_stride) {
  // In an SM80 accumulator atom, entries 2h and 2h+1 are columns c and c+1 of row r (h = 0) or r + 8 (h = 1).
  static_assert(decltype(size<0>(acc))::value == 4);
  static_assert(decltype(size<2>(acc))::value % 2 == 0, "atoms pair up into 16-column chunks");
  static_assert(kRows % kDqBlockRows == 0 && kCols % kDqBlockCols == 0);
  const bool full_tile = valid_rows >= kRows && valid_cols >= kCols;
  // All entries of a thread share row % 8 (rows differ by multiples of 8) and column % 16 (chunks start on multiples
  // of 16), so moving an entry to its warp-coalesced slot is one of two offsets, by the parity of its chunk.
  const int r = get<0>(coords(0)) % kDqBlockRows;
  const int t2 = get<1>(coords(0)) % kDqChunkCols;  // 2t
  int shift[2];
  CUTE_UNROLL
  for (int chunk = 0; chunk < 2; ++chunk) {
    const int c = chunk * kDqChunkCols + t2;
    const DqSlot to = warp_coalesced_slot(r, c);
    shift[chunk] = (to.row - r) * row_stride + (to.col - c);
  }
  // One 16-byte atomic: the thread's 4 values of row half h of atom (m, n) and of its partner atom n + 1.
  auto add_coalesced = [&](int h, int m, int n, int col) {
    float* at = &gAcc(2 * h, m, n) + shift[(col / kDqChunkCols) % 2];
    atomic_add4(at, acc(2 * h, m, n), acc(2 * h + 1, m, n), acc(2 * h, m, n + 1), acc(2 * h + 1, m, n + 1));
  };
  // Whole tiles (every tile but the last of a sequence, at an instantiated head dim) take one branch to a loop with
  // no per-entry bounds tests.
  if (full_tile) {
    CUTE_UNROLL
    for (int m = 0; m < size<1>(acc); ++m) {
      CUTE_UNROLL
      for (int n = 0; n < size<2>(acc); n += 2) {
        CUTE_UNROLL
        for (int h = 0; h < 2; ++h) add_coalesced(h, m, n, get<1>(coords(2 * h, m, n)));
      }
    }
    return;
  }
  CUTE_UNROLL
  for (int m = 0; m < size<1>(acc); ++m) {
    CUTE_UNROLL
    for (int n = 0; n < size<2>(acc); n += 2) {
      CUTE_UNROLL
      for (int h = 0; h < 2; ++h) {
        const int row = get<0>(coords(2 * h, m, n));
        const int col = get<1>(coords(2 * h, m, n));  // chunk start + 2t
        if (dq_block_is_full(row, col, valid_rows, valid_cols)) {
          add_coalesced(h, m, n, col);
        } else if (row < valid_rows) {  // a block cut by the end of the sequence or head dim: natural order
          CUTE_UNROLL
          for (int half = 0; half < 2; ++half) {
            if (col + 8 * half < valid_cols) {
              atomicAdd(&gAcc(2 * h, m, n + half), acc(2 * h, m, n + half));
              atomicAdd(&gAcc(2 * h + 1, m, n + half), acc(2 * h + 1, m, n + half));
            }
          }
        }
      }
    }
  }
}

}  // namespace jax_flash::sm80
