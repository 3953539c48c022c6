// Where a dQ element lives in the float32 accumulator dq_accum [B, Sq, Hq, D]. The sm80 backward adds into it from
// MMA accumulators, where lane L of a warp holds, for one row group of 8 rows and one 16-column chunk, row L / 4 at
// columns 2t, 2t+1, 8+2t, 9+2t (t = L % 4). Stored in natural order, one warp-wide atomic touches 8 rows, i.e. 8
// cache lines for 256 bytes (Nsight Compute, H200, D128: 30% of the backward's L1 wavefronts, 6x FlashAttention-2's
// global share, with 8-byte atomics). In the "warp-coalesced" order each lane's 4 values are adjacent and a warp's 32
// lanes fill 4 whole 128-byte lines, like FlashAttention-2's coalesced dQ accumulator layout:
//
//   inside each block of 8 rows (aligned to 8 in the sequence) x 32 columns (aligned to 32 in the head dim),
//   natural (row r, column c) sits at (row 4 * (c / 16) + r / 2, column 16 * (r % 2) + quad(c % 16)),
//   quad(8h + 2t + k) = 4t + 2h + k.
//
// Blocks that are cut by the end of the sequence or of the head dim stay in natural order, so the buffer keeps its
// shape and no element moves outside its (batch, head). The postprocess reads the accumulator in the same order.
#pragma once

#include "common/attention_params.h"

namespace jax_flash {

enum class DqAccumOrder {
  kNatural,        // (row, column) at (row, column)
  kWarpCoalesced,  // permuted inside every full 8 x 32 block, as above
};

constexpr int kDqBlockRows = 8;
constexpr int kDqBlockCols = 32;
constexpr int kDqChunkCols = 16;

// Row and column offsets inside an 8 x 32 block.
struct DqSlot {
  int row;
  int col;
};

// Where natural (r, c) of a full block is stored, r in [0, 8), c in [0, 32).
JF_HOST_DEVICE constexpr DqSlot warp_coalesced_slot(int r, int c) {
  const int cc = c % kDqChunkCols;
  const int h = cc / 8, t = (cc % 8) / 2, k = cc % 2;
  return {(kDqBlockRows / 2) * (c / kDqChunkCols) + r / 2, kDqChunkCols * (r % 2) + 4 * t + 2 * h + k};
}

// True when the 8 x 32 block holding (row, col) lies inside a sequence of `rows` rows and a head of `cols` columns.
JF_HOST_DEVICE constexpr bool dq_block_is_full(int64_t row, int col, int64_t rows, int cols) {
  return row - row % kDqBlockRows + kDqBlockRows <= rows && col - col % kDqBlockCols + kDqBlockCols <= cols;
}

}  // namespace jax_flash
