// Views of the register fragments of SM80 16x8x16 MMAs.
//
// An accumulator fragment has layout (4, MMA_M, MMA_N): for each 16x8 atom a thread holds (row r, cols c and c+1)
// and (row r+8, cols c and c+1). Row reductions (softmax) want it as a (rows, cols) matrix; P = softmax(S) feeds
// the next MMA as its A operand without leaving registers.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>

namespace jax_flash::sm80 {

using namespace cute;

// (4, MMA_M, MMA_N) -> ((2, MMA_M), (2, MMA_N)): rows (r / r+8, m), columns (c / c+1, n).
template <typename Layout>
CUTE_HOST_DEVICE constexpr auto accumulator_rowcol(Layout acc) {
  static_assert(decltype(size<0>(acc))::value == 4 && decltype(rank(acc))::value == 3);
  auto l = logical_divide(acc, Shape<_2>{});  // ((2, 2), MMA_M, MMA_N)
  return make_layout(make_layout(get<0, 1>(l), get<1>(l)), make_layout(get<0, 0>(l), get<2>(l)));
}

// The same registers as a tensor in the (rows, cols) view.
template <typename Tensor_>
CUTE_HOST_DEVICE auto as_rowcol(Tensor_&& acc) {
  return make_tensor(acc.data(), accumulator_rowcol(acc.layout()));
}

// Accumulator (4, MMA_M, MMA_N) of a 16x8 output as the A operand ((4, 2), MMA_M, MMA_N / 2) of a 16x8x16 MMA: two
// neighbouring 8-column accumulator atoms form one 16-deep k-slice.
template <typename Layout>
CUTE_HOST_DEVICE constexpr auto accumulator_as_operand_a(Layout acc) {
  static_assert(decltype(size<0>(acc))::value == 4 && decltype(rank(acc))::value == 3);
  auto l = logical_divide(acc, Shape<Underscore, Underscore, _2>{});  // (4, MMA_M, (2, MMA_N / 2))
  return make_layout(make_layout(get<0>(l), get<2, 0>(l)), get<1>(l), get<2, 1>(l));
}

// Element-wise conversion of a register fragment (compact layout) to another element type, two values per
// instruction where the hardware has it.
template <typename To, typename Engine, typename Layout>
__device__ __forceinline__ auto convert_fragment(const Tensor<Engine, Layout>& from) {
  using From = typename Engine::value_type;
  constexpr int kSize = decltype(size(from))::value;
  Tensor to = make_tensor<To>(from.layout());
  const auto& src = *reinterpret_cast<const cutlass::Array<From, kSize>*>(raw_pointer_cast(from.data()));
  auto& dst = *reinterpret_cast<cutlass::Array<To, kSize>*>(raw_pointer_cast(to.data()));
  dst = cutlass::NumericArrayConverter<To, From, kSize>{}(src);
  return to;
}

}  // namespace jax_flash::sm80
