// The attention mask on one tile of scores, from the single mask definition in common/mask.h: which key blocks a
// query tile visits, which of those need per-element masking (causal diagonal, window edges, the partial last key
// block), and setting the invisible scores of such a block to -inf.
#pragma once

#include <cmath>
#include <cstdint>

#include <cute/tensor.hpp>

#include "common/attention_params.h"
#include "common/mask.h"
#include "sm90/fragments.h"

namespace jax_flash::sm90 {

using namespace cute;

template <int kBlockM, int kBlockN>
struct ScoreMask {
  const AttentionParams& p;
  IndexRange rows;  // the query rows of this tile that exist (the tile may run past Sq)
  // Key blocks [unmasked_begin, unmasked_end) that every row of the tile sees whole (block_fully_visible),
  // computed once per tile so that the per-block test is two 32-bit compares.
  int unmasked_begin, unmasked_end;

  __device__ __forceinline__ ScoreMask(const AttentionParams& params, int m_block)
      : p(params), rows{int64_t(m_block) * kBlockM, jf_min(int64_t(m_block + 1) * kBlockM, params.seqlen_q)} {
    // Keys every row sees: from the last row's first visible key to the first row's end (both ends of the
    // visible range are nondecreasing in the row).
    const int64_t first_key = visible_keys(p, rows.end - 1).begin;
    const int64_t end_key = visible_keys(p, rows.begin).end;
    unmasked_begin = int((first_key + kBlockN - 1) / kBlockN);
    unmasked_end = int(end_key / kBlockN);
  }

  // Key blocks [begin, end) holding at least one key some row of the tile sees; empty when no row sees a key.
  __device__ __forceinline__ IndexRange key_blocks() const {
    const IndexRange keys = visible_keys(p, rows);
    if (keys.empty()) return {0, 0};
    return {keys.begin / kBlockN, (keys.end + kBlockN - 1) / kBlockN};
  }

  // False when every row of the tile sees every key of block n_block (which then lies entirely below Sk).
  __device__ __forceinline__ bool needs_mask(int n_block) const {
    return n_block < unmasked_begin || n_block >= unmasked_end;
  }

  // scores: this thread's accumulator fragment of the [kBlockM, kBlockN] tile; thr_mma: its slice of the tiled MMA.
  template <class Scores, class ThrMma>
  __device__ __forceinline__ void apply(Scores& scores, const ThrMma& thr_mma, int n_block) const {
    const auto tile = Shape<Int<kBlockM>, Int<kBlockN>>{};
    Tensor coords = thr_mma.partition_C(make_identity_tensor(tile));
    Tensor s = make_tensor(scores.data(), accumulator_rows_cols(scores.layout()));
    Tensor c = make_tensor(coords.data(), accumulator_rows_cols(coords.layout()));
    // Columns relative to this thread's first column are compile-time constants; the thread's own offset goes
    // into the per-row limits instead.
    const int thread_col = get<1>(c(_0{}, _0{}));
    const int64_t first_key = int64_t(n_block) * kBlockN + thread_col;
    CUTE_UNROLL
    for (int m = 0; m < size<0>(s); ++m) {
      const IndexRange keys = visible_keys(p, rows.begin + get<0>(c(m, _0{})));
      // Visible columns of this row, relative to the thread's first column, clamped into the tile.
      const int lo = int(jf_max(-1, jf_min(kBlockN, keys.begin - first_key)));
      const int hi = int(jf_max(-1, jf_min(kBlockN, keys.end - first_key)));
      CUTE_UNROLL
      for (int n = 0; n < size<1>(s); ++n) {
        const int col = get<1>(c(m, n)) - thread_col;
        if (col < lo || col >= hi) s(m, n) = -INFINITY;
      }
    }
  }
};

}  // namespace jax_flash::sm90
