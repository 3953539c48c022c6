// Adds an MMA accumulator tile into float32 global memory with atomics (the backward's dQ: every key block of every
// CTA contributes to the same rows). Neighbouring columns of a row go out as one 8-byte atomic where the hardware has
// it (sm90), halving the atomic traffic.
#pragma once

#include <cute/tensor.hpp>

namespace jax_flash::sm80 {

using namespace cute;

// gAcc: the accumulator's partition of the global tile (same layout as `acc`); coords: (row, col) within the tile of
// each entry. Rows >= valid_rows and columns >= valid_cols are skipped; valid_cols is even.
template <int kRows, int kCols, typename Global, typename Acc, typename Coords>
__device__ __forceinline__ void atomic_add_tile(Global&& gAcc, const Acc& acc, const Coords& coords, int valid_rows,
                                                int valid_cols) {
  // In an SM80 accumulator, entries 2j and 2j+1 are columns c and c+1 of one row.
  static_assert(decltype(size<0>(acc))::value == 4);
  const bool full_tile = valid_rows >= kRows && valid_cols >= kCols;
  CUTE_UNROLL
  for (int i = 0; i < size(acc); i += 2) {
    if (full_tile || (get<0>(coords(i)) < valid_rows && get<1>(coords(i)) < valid_cols)) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      atomicAdd(reinterpret_cast<float2*>(&gAcc(i)), make_float2(acc(i), acc(i + 1)));
#else
      atomicAdd(&gAcc(i), acc(i));
      atomicAdd(&gAcc(i + 1), acc(i + 1));
#endif
    }
  }
}

}  // namespace jax_flash::sm80
