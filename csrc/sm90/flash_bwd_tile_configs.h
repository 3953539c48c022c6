// The backward kernel configuration per head-dim tile (after FlashAttention-3's Hopper backward): 128 keys per CTA;
// 64 query rows per step at head dim 128, where dK and dV alone take 128 of a consumer thread's 240 registers, and
// 128 rows at head dim 64, where they take 64 and the GEMMs need the longer reduction to keep the tensor cores
// busy. Head dim 256: dK and dV of 128 keys split by keys would need 256 registers a thread, so the CTA owns 64
// keys and the warpgroups split the head dim of dK and dV (128 registers; after FlashAttention-3's dKV_swapAB), with
// 64 query rows per step; K, V, two stages of Q and dO, P and dS take 224 KiB of shared memory, the float32 dQ
// tile of a step going into its Q/dO stage (kDqInQdOStage).
#pragma once

#include "sm90/flash_bwd_kernel_traits.h"

namespace jax_flash::sm90 {

template <class Element>
using BwdHdim64 = BwdKernelTraits<Element, 64, 128>;
template <class Element>
using BwdHdim128 = BwdKernelTraits<Element, 128, 64>;
template <class Element>
using BwdHdim256 = BwdKernelTraits<Element, 256, 64, /*kDkvSplitsHeadDim=*/true, /*kStages=*/2,
                                   /*kDqInQdOStage=*/true>;

}  // namespace jax_flash::sm90
