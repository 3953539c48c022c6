// One CTA-wide GEMM step, acc += A B, with operands read from shared memory by ldmatrix one k-slice ahead of the
// tensor-core MMAs that consume them (the inner loop of every sm80 kernel).
#pragma once

#include <cute/tensor.hpp>

namespace jax_flash::sm80 {

using namespace cute;

// A shared-memory operand: the tiled copy (ldmatrix) that fills `fragment` (the MMA's register view) from `smem`
// (the copy's partition of the shared tile).
template <typename TiledCopy, typename ThrCopy, typename Smem, typename Fragment>
struct SmemOperand {
  TiledCopy copy;
  ThrCopy thr_copy;
  Smem smem;
  Fragment& fragment;

  __device__ __forceinline__ auto fragment_view() { return thr_copy.retile_D(fragment); }
};

template <typename TiledCopy, typename ThrCopy, typename Smem, typename Fragment>
__device__ __forceinline__ auto smem_operand(const TiledCopy& copy, const ThrCopy& thr_copy, const Smem& smem,
                                             Fragment& fragment) {
  return SmemOperand<TiledCopy, ThrCopy, Smem, Fragment>{copy, thr_copy, smem, fragment};
}

// acc += A B, both operands from shared memory.
template <typename TiledMma, typename Acc, typename OperandA, typename OperandB>
__device__ __forceinline__ void gemm_ss(const TiledMma& mma, Acc& acc, OperandA a, OperandB b) {
  Tensor a_view = a.fragment_view();
  Tensor b_view = b.fragment_view();
  constexpr int kSlices = decltype(size<2>(a.fragment))::value;
  static_assert(kSlices == decltype(size<2>(b.fragment))::value);
  cute::copy(a.copy, a.smem(_, _, 0), a_view(_, _, 0));
  cute::copy(b.copy, b.smem(_, _, 0), b_view(_, _, 0));
  CUTE_UNROLL
  for (int k = 0; k < kSlices; ++k) {
    if (k + 1 < kSlices) {
      cute::copy(a.copy, a.smem(_, _, k + 1), a_view(_, _, k + 1));
      cute::copy(b.copy, b.smem(_, _, k + 1), b_view(_, _, k + 1));
    }
    cute::gemm(mma, a.fragment(_, _, k), b.fragment(_, _, k), acc);
  }
}

// acc += A B, A already in registers (e.g. the probabilities P), B from shared memory.
template <typename TiledMma, typename Acc, typename FragmentA, typename OperandB>
__device__ __forceinline__ void gemm_rs(const TiledMma& mma, Acc& acc, const FragmentA& a, OperandB b) {
  Tensor b_view = b.fragment_view();
  constexpr int kSlices = decltype(size<2>(a))::value;
  static_assert(kSlices == decltype(size<2>(b.fragment))::value);
  cute::copy(b.copy, b.smem(_, _, 0), b_view(_, _, 0));
  CUTE_UNROLL
  for (int k = 0; k < kSlices; ++k) {
    if (k + 1 < kSlices) cute::copy(b.copy, b.smem(_, _, k + 1), b_view(_, _, k + 1));
    cute::gemm(mma, a(_, _, k), b.fragment(_, _, k), acc);
  }
}

}  // namespace jax_flash::sm80
