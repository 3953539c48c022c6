// The attention mask seen from one block of keys (the backward's CTA), from the single mask definition in
// common/mask.h: which query blocks see any of its keys, which of those need per-element masking, and masking the
// transposed scores S^T (rows = keys, columns = queries) of such a block.
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
struct KeyBlockMask {
  const AttentionParams& p;
  IndexRange keys;  // the keys of this block that exist (the block may run past Sk)
  int64_t first_key;
  // Query blocks [unmasked_begin, unmasked_end) whose rows (those below Sq) all see every key of this block,
  // computed once per CTA so that the per-step test is two 32-bit compares.
  int unmasked_begin, unmasked_end;

  __device__ __forceinline__ KeyBlockMask(const AttentionParams& params, int n_block)
      : p(params),
        keys{int64_t(n_block) * kBlockN, jf_min(int64_t(n_block + 1) * kBlockN, params.seqlen_k)},
        first_key(int64_t(n_block) * kBlockN) {
    // A row sees every key of a whole block iff it sees the block's first and its last key; the rows that see one
    // key form an interval, so those that see both are the intersection of two intervals. A block running past Sk
    // needs the mask everywhere.
    const int64_t last_key = first_key + kBlockN - 1;
    const IndexRange rows_first = visible_queries(p, IndexRange{first_key, first_key + 1});
    const IndexRange rows_last = visible_queries(p, IndexRange{last_key, last_key + 1});
    const int64_t rows_begin = rows_last.begin;
    const int64_t rows_end = jf_min(rows_first.end, rows_last.end);
    const bool whole = last_key < p.seqlen_k && rows_begin < rows_end;
    unmasked_begin = whole ? int((rows_begin + kBlockM - 1) / kBlockM) : 0;
    // The last query block may run past Sq: its existing rows are what counts.
    unmasked_end = !whole ? 0 : rows_end >= p.seqlen_q ? int((p.seqlen_q + kBlockM - 1) / kBlockM)
                                                       : int(rows_end / kBlockM);
  }

  // Query blocks [begin, end) holding at least one row that sees a key of this block.
  __device__ __forceinline__ IndexRange query_blocks() const {
    if (keys.empty()) return {0, 0};
    const IndexRange rows = visible_queries(p, keys);
    if (rows.empty()) return {0, 0};
    return {rows.begin / kBlockM, (rows.end + kBlockM - 1) / kBlockM};
  }

  // False when every row of query block m_block that exists sees every key of this (whole, in-range) block.
  __device__ __forceinline__ bool needs_mask(int m_block) const {
    return m_block < unmasked_begin || m_block >= unmasked_end;
  }

  // values_t: this thread's accumulator fragment of a [kBlockN, kBlockM] tile of S^T or P^T; thr_mma: its slice of
  // the tiled MMA. Sets every entry of a (key, query) pair the query does not see (or of a key past Sk, or a row
  // past Sq) to `fill`.
  template <class Values, class ThrMma>
  __device__ __forceinline__ void apply(Values& values_t, const ThrMma& thr_mma, int m_block, float fill) const {
    const auto tile = Shape<Int<kBlockN>, Int<kBlockM>>{};
    Tensor coords = thr_mma.partition_C(make_identity_tensor(tile));
    Tensor s = make_tensor(values_t.data(), accumulator_rows_cols(values_t.layout()));
    Tensor c = make_tensor(coords.data(), accumulator_rows_cols(coords.layout()));
    // Columns relative to this thread's first column are compile-time constants; the thread's own offset goes
    // into the per-key limits instead.
    const int thread_col = get<1>(c(_0{}, _0{}));
    const int64_t first_row = int64_t(m_block) * kBlockM + thread_col;
    CUTE_UNROLL
    for (int m = 0; m < size<0>(s); ++m) {
      const int64_t key = first_key + get<0>(c(m, _0{}));
      const IndexRange rows = key < p.seqlen_k ? visible_queries(p, IndexRange{key, key + 1}) : IndexRange{0, 0};
      // Visible columns of this key, relative to the thread's first column, clamped into the tile.
      const int lo = int(jf_max(-1, jf_min(kBlockM, rows.begin - first_row)));
      const int hi = int(jf_max(-1, jf_min(kBlockM, rows.end - first_row)));
      CUTE_UNROLL
      for (int n = 0; n < size<1>(s); ++n) {
        const int col = get<1>(c(m, n)) - thread_col;
        if (col < lo || col >= hi) s(m, n) = fill;
      }
    }
  }
};

}  // namespace jax_flash::sm90
