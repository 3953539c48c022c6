// The backward kernel configuration per head-dim tile (after FlashAttention-3's Hopper backward): 128 keys per CTA;
// 64 query rows per step at head dim 128, where dK and dV alone take 128 of a consumer thread's 240 registers, and
// 128 rows at head dim 64, where they take 64 and the GEMMs need the longer reduction to keep the tensor cores
// busy. Head dim 256 has no configuration here: dK and dV of 64 keys would need 256 registers a thread in
// this design; such problems run the sm80 backward.
#pragma once

#include "sm90/flash_bwd_kernel_traits.h"

namespace jax_flash::sm90 {

// Head-dim tiles the backward has configurations for.
constexpr int kBwdHeadDimTiles[] = {64, 128};

template <class Element>
using BwdHdim64 = BwdKernelTraits<Element, 64, 128>;
template <class Element>
using BwdHdim128 = BwdKernelTraits<Element, 128, 64>;

}  // namespace jax_flash::sm90
