// Where a dQ column lives inside a row of the float32 accumulator dq_accum [B, Sq, Hq, D]. The sm80 backward adds
// into it from MMA accumulators, where a quad of 4 threads holds one row's 16 columns of two adjacent 8-column atoms
// as pairs (thread t: columns 2t, 2t+1 and 8 + 2t, 8 + 2t + 1). Stored "quad-interleaved", each thread's 4 values
// are adjacent, so one 16-byte atomic adds them (half the atomic instructions and L1 wavefronts of 8-byte pairs).
// The postprocess reads the accumulator back in the same order. Rows are never permuted, so partial tiles need no
// special case; a trailing half chunk (head dims = 8 mod 16) stays in natural order.
#pragma once

#include "common/attention_params.h"

namespace jax_flash {

enum class DqAccumOrder {
  kNatural,          // column c at c
  kQuadInterleaved,  // inside every full 16-column chunk: column 8h + 2t + k at 4t + 2h + k
};

constexpr int kDqChunkCols = 16;

// Position inside its chunk of column `col_in_chunk` (0..15) of a full chunk in kQuadInterleaved order.
JF_HOST_DEVICE constexpr int quad_interleaved_position(int col_in_chunk) {
  const int h = col_in_chunk / 8, t = (col_in_chunk % 8) / 2, k = col_in_chunk % 2;
  return 4 * t + 2 * h + k;
}

// True when the chunk holding column `col` lies inside a row of `head_dim` columns (so it is stored interleaved).
JF_HOST_DEVICE constexpr bool dq_chunk_is_full(int col, int head_dim) {
  return col - col % kDqChunkCols + kDqChunkCols <= head_dim;
}

}  // namespace jax_flash
