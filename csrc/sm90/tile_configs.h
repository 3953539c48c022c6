// The tuned kernel configuration per head-dim tile (after the FlashAttention-3 tile choices: tiles at the edge of
// shared memory and registers). Masked (causal/window) problems at head dim 128 use a square key block: the
// diagonal blocks are cheaper to mask and the 128 x 176 tile loses its edge when a third of the blocks are masked.
#pragma once

#include "sm90/kernel_traits.h"

namespace jax_flash::sm90 {

// Head-dim tiles this family has configurations for; a head dim runs in the smallest compiled tile that holds it.
constexpr int kHeadDimTiles[] = {64, 128, 256};

template <class Element, int kHeadDimTile, bool kMasked>
struct TunedConfig;

// 192 query rows = three consumer warpgroups; small head dim leaves room for them.
template <class Element, bool kMasked>
struct TunedConfig<Element, 64, kMasked> {
  using Traits = FwdKernelTraits<Element, 64, 192, 128, /*kPingPong=*/true, /*kIntraWarpgroupOverlap=*/true>;
};

template <class Element>
struct TunedConfig<Element, 128, false> {
  using Traits = FwdKernelTraits<Element, 128, 128, 176, true, true>;
};

template <class Element>
struct TunedConfig<Element, 128, true> {
  using Traits = FwdKernelTraits<Element, 128, 128, 128, true, true>;
};

// O alone is 128 registers a thread: no room for ping-pong's second set of live scores; 128 x 80 fills the
// shared memory with two K and two V stages.
template <class Element, bool kMasked>
struct TunedConfig<Element, 256, kMasked> {
  using Traits = FwdKernelTraits<Element, 256, 128, 80, false, true>;
};

}  // namespace jax_flash::sm90
