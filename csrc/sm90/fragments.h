// A thread's wgmma accumulator fragments: views of their registers and conversion to 16-bit.
//
// A thread's share of a 64 x N wgmma accumulator has layout ((2, 2, N/8), MMA_M, MMA_N): a pair of adjacent
// columns, two rows 8 apart (r and r + 8), and one such 2 x 2 block per 8-column chunk.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_conversion.h>

namespace jax_flash::sm90 {

using namespace cute;

// (rows, cols) view: rows = (2, MMA_M), cols = (2, N/8, MMA_N). Row reductions (softmax max/sum) run over cols.
template <class Layout>
__device__ __forceinline__ auto accumulator_rows_cols(Layout acc) {
  static_assert(decltype(rank<0>(acc))::value == 3 && decltype(rank(acc))::value == 3);
  return make_layout(make_layout(get<0, 1>(acc), get<1>(acc)), make_layout(get<0, 0>(acc), get<0, 2>(acc), get<2>(acc)));
}

// The same registers as the A operand of a register-sourced 16-bit wgmma (k = 16 per instruction):
// ((2, 2, 2), MMA_M, (N/16, MMA_N)). The k16 block kk of A is accumulator chunks 2kk and 2kk + 1, in the order
// (column pair, row half, chunk) that the wgmma A fragment expects, so converting S to P needs no shuffles.
template <class Layout>
__device__ __forceinline__ auto accumulator_as_operand_a(Layout acc) {
  static_assert(decltype(rank<0>(acc))::value == 3 && decltype(rank(acc))::value == 3);
  auto chunk_pairs = logical_divide(get<0, 2>(acc), Tile<_2>{});  // (2, N/16)
  return make_layout(make_layout(get<0, 0>(acc), get<0, 1>(acc), get<0, 0>(chunk_pairs)), get<1>(acc),
                     coalesce(make_layout(get<0, 1>(chunk_pairs), get<2>(acc))));
}

// dst(i) = src(i) rounded to dst's type, for fragments of one shape whose element pairs (2i, 2i + 1) are adjacent
// registers in both (true of the views above): one packed conversion per pair.
template <class Src, class Dst>
__device__ __forceinline__ void convert_fragment(const Src& src, Dst& dst) {
  using To = typename Dst::value_type;
  using From = typename Src::value_type;
  static_assert(decltype(size(src))::value == decltype(size(dst))::value && decltype(size(src))::value % 2 == 0);
  cutlass::NumericArrayConverter<To, From, 2> convert_pair;
  CUTE_UNROLL
  for (int i = 0; i < size(src); i += 2) {
    const cutlass::Array<To, 2> pair = convert_pair(cutlass::Array<From, 2>{src(i), src(i + 1)});
    dst(i) = pair[0];
    dst(i + 1) = pair[1];
  }
}

}  // namespace jax_flash::sm90
