// The tuned kernel configurations per head-dim tile (after the FlashAttention-3 tile choices: tiles at the edge of
// shared memory and registers) and the rule that picks one for a problem. Measured on an H200 (bf16, TFLOP/s,
// batch x seqlen = 16k tokens, heads x head_dim = 2048, 50 back-to-back launches):
//   head dim 64, causal:   seqlen   512 / 1k / 2k / 4k / 16k   192x128: 165 / 235 / 344 / 406 / 458
//                                                              128x128: 196 / 271 / 335 / 377 / 416
//   head dim 128, no mask: seqlen   512 / 1k / 2k / 4k / 16k   128x176: 448 / 544 / 607 / 640 / 596
//                                                              128x128: 484 / 559 / 604 / 626 / 582
// Short sequences favour small tiles (less padding in the last block, more tiles to balance); long ones the
// larger tiles. Masked problems at head dim 128 use the square key block as FlashAttention-3 does.
#pragma once

#include "common/attention_params.h"
#include "sm90/kernel_traits.h"

namespace jax_flash::sm90 {

// 192 query rows = three consumer warpgroups; a small head dim leaves room for them.
template <class Element>
using Hdim64Rows192 = FwdKernelTraits<Element, 64, 192, 128, /*kPingPong=*/true, /*kIntraWarpgroupOverlap=*/true>;
template <class Element>
using Hdim64Rows128 = FwdKernelTraits<Element, 64, 128, 128, true, true>;
template <class Element>
using Hdim128Keys176 = FwdKernelTraits<Element, 128, 128, 176, true, true>;
template <class Element>
using Hdim128Keys128 = FwdKernelTraits<Element, 128, 128, 128, true, true>;
// O alone is 128 registers a thread: no room for ping-pong's second set of live scores; 128 x 80 fills the
// shared memory with two K and two V stages.
template <class Element>
using Hdim256 = FwdKernelTraits<Element, 256, 128, 80, false, true>;

// Sequences up to this length take the smaller tile of their head dim (see the table above).
constexpr int64_t kShortSeqlen = 1024;

// Calls f(Traits{}) with the configuration for the problem (the head dim must fit kHeadDimTile).
template <class Element, int kHeadDimTile, class F>
auto with_tuned_config(const AttentionParams& p, bool masked, F&& f) {
  if constexpr (kHeadDimTile == 64) {
    return masked && p.seqlen_q <= kShortSeqlen ? f(Hdim64Rows128<Element>{}) : f(Hdim64Rows192<Element>{});
  } else if constexpr (kHeadDimTile == 128) {
    return masked || p.seqlen_k <= kShortSeqlen ? f(Hdim128Keys128<Element>{}) : f(Hdim128Keys176<Element>{});
  } else {
    static_assert(kHeadDimTile == 256);
    return f(Hdim256<Element>{});
  }
}

}  // namespace jax_flash::sm90
