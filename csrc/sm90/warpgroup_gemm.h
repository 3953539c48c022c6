// Issuing one warpgroup GEMM as a batch of asynchronous wgmma instructions.
#pragma once

#include <cute/tensor.hpp>

namespace jax_flash::sm90 {

using namespace cute;

// C (+)= A B over the k blocks of the fragments, committed as one wgmma group. With kWaitGroups >= 0 the thread
// then waits until at most that many groups are still in flight; -1 returns at once (the caller waits later).
// `zero_init` starts from C = 0 instead of accumulating.
template <int kWaitGroups, class TiledMma, class FragA, class FragB, class FragC>
__device__ __forceinline__ void warpgroup_gemm(TiledMma& mma, const FragA& a, const FragB& b, FragC& c,
                                               bool zero_init) {
  constexpr bool kAFromRegisters = !cute::is_base_of<GMMA::DescriptorIterator, typename TiledMma::FrgTypeA>::value;
  // The fences keep the compiler from moving register reads/writes of the operands across the async MMAs.
  if constexpr (kAFromRegisters) warpgroup_fence_operand(const_cast<FragA&>(a));
  warpgroup_fence_operand(c);
  warpgroup_arrive();
  mma.accumulate_ = zero_init ? GMMA::ScaleOut::Zero : GMMA::ScaleOut::One;
  CUTE_UNROLL
  for (int kb = 0; kb < size<2>(a); ++kb) {
    cute::gemm(mma, a(_, _, kb), b(_, _, kb), c);
    mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  if constexpr (kWaitGroups >= 0) warpgroup_wait<kWaitGroups>();
  warpgroup_fence_operand(c);
  if constexpr (kAFromRegisters) warpgroup_fence_operand(const_cast<FragA&>(a));
}

}  // namespace jax_flash::sm90
