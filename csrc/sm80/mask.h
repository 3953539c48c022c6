// Applies the attention mask (common/mask.h: causal, window, bottom-right aligned, diagonal offset) to one
// [rows, kBlockN keys] block of scores held in MMA accumulators. Callers skip blocks that block_fully_visible()
// accepts; a key block that runs past Sk never counts as fully visible, so partial tiles are masked here too.
#pragma once

#include <cute/tensor.hpp>

#include "common/mask.h"

namespace jax_flash::sm80 {

using namespace cute;

// coords: (rows, cols) view of an identity tensor partitioned like the accumulator, giving (row, col) within the
// block. Calls on_masked(r, c) for every entry (r, c) of the view whose query row0 + row must not see key col0 + col.
template <int kBlockN, typename Coords, typename OnMasked>
__device__ __forceinline__ void mask_block(const Coords& coords, const AttentionParams& p, int64_t row0, int64_t col0,
                                           OnMasked&& on_masked) {
  CUTE_UNROLL
  for (int r = 0; r < size<0>(coords); ++r) {
    const IndexRange visible = visible_keys(p, row0 + get<0>(coords(r, 0)));
    // The visible columns of this block, relative to col0.
    const int begin = int(jf_min(jf_max(visible.begin - col0, 0), kBlockN));
    const int end = int(jf_min(jf_max(visible.end - col0, 0), kBlockN));
    CUTE_UNROLL
    for (int c = 0; c < size<1>(coords); ++c) {
      const int col = get<1>(coords(r, c));
      if (col < begin || col >= end) on_masked(r, c);
    }
  }
}

}  // namespace jax_flash::sm80
