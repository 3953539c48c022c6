// Which keys a query row sees (causal, sliding window, bottom-right aligned when Sq != Sk), and which queries see
// a key block. Every kernel family uses these so that the mask has one definition.
#pragma once

#include <cstdint>

#include "common/attention_params.h"

namespace jax_flash {

// Half-open interval [begin, end); empty when begin >= end.
struct IndexRange {
  int64_t begin;
  int64_t end;
  JF_HOST_DEVICE bool empty() const { return begin >= end; }
  JF_HOST_DEVICE bool contains(int64_t i) const { return begin <= i && i < end; }
};

JF_HOST_DEVICE int64_t jf_min(int64_t a, int64_t b) { return a < b ? a : b; }
JF_HOST_DEVICE int64_t jf_max(int64_t a, int64_t b) { return a > b ? a : b; }

// Keys visible to query row `row`, within [0, Sk]. Both ends are nondecreasing in `row`.
JF_HOST_DEVICE IndexRange visible_keys(const AttentionParams& p, int64_t row) {
  const int64_t diagonal = p.diagonal(row);
  // Clamped to Sk: with a positive diagonal_offset a row's window can start past the last key.
  const int64_t begin = p.window_left == kUnbounded ? 0 : jf_min(p.seqlen_k, jf_max(0, diagonal - p.window_left));
  const int64_t end = p.window_right == kUnbounded ? p.seqlen_k : jf_min(p.seqlen_k, diagonal + p.window_right + 1);
  return {begin, jf_max(begin, end)};
}

// Keys visible to any row of the query block [rows.begin, rows.end).
JF_HOST_DEVICE IndexRange visible_keys(const AttentionParams& p, IndexRange rows) {
  return {visible_keys(p, rows.begin).begin, visible_keys(p, rows.end - 1).end};
}

// True when every row of `rows` sees every key of `keys`: the block needs no per-element mask.
JF_HOST_DEVICE bool block_fully_visible(const AttentionParams& p, IndexRange rows, IndexRange keys) {
  return visible_keys(p, rows.end - 1).begin <= keys.begin && visible_keys(p, rows.begin).end >= keys.end;
}

// Query rows that see at least one key of the key block [keys.begin, keys.end).
JF_HOST_DEVICE IndexRange visible_queries(const AttentionParams& p, IndexRange keys) {
  const int64_t offset = p.diagonal(0);
  // Row i sees key j iff j - offset - window_right <= i <= j - offset + window_left.
  const int64_t begin =
      p.window_right == kUnbounded ? 0 : jf_min(p.seqlen_q, jf_max(0, keys.begin - offset - p.window_right));
  const int64_t end =
      p.window_left == kUnbounded ? p.seqlen_q : jf_min(p.seqlen_q, keys.end - 1 - offset + p.window_left + 1);
  return {begin, jf_max(begin, end)};
}

}  // namespace jax_flash
