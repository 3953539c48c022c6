// Tile configuration of the sm80 kernels: block shapes per head dim, the MMA and copy atoms, and the shared-memory
// layouts. Everything here is compile-time; the kernels are compositions of these types.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include "sm80/kernel_params.h"

namespace jax_flash::sm80 {

using namespace cute;

template <ElementKind kKind>
struct ElementTypes;

template <>
struct ElementTypes<ElementKind::kFloat16> {
  using Element = cutlass::half_t;
  using MmaAtom = MMA_Atom<SM80_16x8x16_F32F16F16F32_TN>;
};

template <>
struct ElementTypes<ElementKind::kBFloat16> {
  using Element = cutlass::bfloat16_t;
  using MmaAtom = MMA_Atom<SM80_16x8x16_F32BF16BF16F32_TN>;
};

// Rows of [rows, kHeadDim] tiles in shared memory are stored in swizzled atoms of 8 rows x kSmemCols columns, so
// that 16-byte cp.async stores and ldmatrix loads of one warp hit distinct banks.
template <typename Element, int kHeadDim>
struct HeadDimTiling {
  static_assert(kHeadDim % 32 == 0, "instantiated head dims must be multiples of 32");
  static constexpr int kSmemCols = kHeadDim % 64 == 0 ? 64 : 32;
  static constexpr int kSwizzleBits = kSmemCols == 64 ? 3 : 2;
  using SmemAtom = decltype(composition(Swizzle<kSwizzleBits, 3, 3>{},
                                        Layout<Shape<_8, Int<kSmemCols>>, Stride<Int<kSmemCols>, _1>>{}));

  // Global memory moves 16 bytes per thread; a row of kSmemCols columns is covered by kThreadsPerRow threads.
  static constexpr int kElemsPerAccess = 16 / sizeof(Element);
  static constexpr int kThreadsPerRow = kSmemCols / kElemsPerAccess;
  template <int kThreads>
  using ThreadLayout =
      Layout<Shape<Int<kThreads / kThreadsPerRow>, Int<kThreadsPerRow>>, Stride<Int<kThreadsPerRow>, _1>>;

  template <int kThreads>
  using GmemLoad = decltype(make_tiled_copy(Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL<uint128_t>, Element>{},
                                            ThreadLayout<kThreads>{}, Layout<Shape<_1, Int<kElemsPerAccess>>>{}));
  template <int kThreads>
  using GmemStore = decltype(make_tiled_copy(Copy_Atom<AutoVectorizingCopyWithAssumedAlignment<128>, Element>{},
                                             ThreadLayout<kThreads>{}, Layout<Shape<_1, Int<kElemsPerAccess>>>{}));
};

// Copy atoms between shared memory and MMA fragments.
template <typename Element>
struct SmemAtoms {
  using Load = Copy_Atom<SM75_U32x4_LDSM_N, Element>;            // ldmatrix: operand stored K-major
  using LoadTransposed = Copy_Atom<SM75_U16x8_LDSM_T, Element>;  // ldmatrix.trans: operand stored MN-major
  using Store = Copy_Atom<AutoVectorizingCopyWithAssumedAlignment<128>, Element>;  // accumulators -> smem
};

// A TiledMMA of SM80 16x8x16 atoms with kWarpsM x kWarpsN warps; each warp covers 16 rows and 16 columns per step,
// so an x4 ldmatrix feeds both operands. The N permutation makes a warp's 16 columns adjacent (its two 8-column atoms
// side by side: warp w covers columns [16w, 16w + 16) of every 16 * kWarpsN) rather than 8 * kWarpsN apart, so that
// the 4 threads of a quad hold a whole 16-column chunk of a row (the 16-byte dQ atomics rely on it).
template <int kWarpsN>
using WarpContiguousColumns = Layout<Shape<_8, Int<kWarpsN>, _2>, Stride<_1, _16, _8>>;
template <typename MmaAtom, int kWarpsM, int kWarpsN>
using WarpTiledMma = TiledMMA<MmaAtom, Layout<Shape<Int<kWarpsM>, Int<kWarpsN>, _1>>,
                              Tile<Int<16 * kWarpsM>, WarpContiguousColumns<kWarpsN>, _16>>;

// (cols, rows) view of a row-major [rows, cols] smem layout, for operands that the MMA reads transposed.
template <typename SmemLayout, int kRows, int kCols>
using TransposedLayout =
    decltype(composition(SmemLayout{}, make_layout(Shape<Int<kCols>, Int<kRows>>{}, GenRowMajor{})));

// ---------------------------------------------------------------------------------------------------------------
// Forward: one CTA per (kBlockM query rows, head, batch); warps split the rows, each warp owns 16 rows per step.
// ---------------------------------------------------------------------------------------------------------------
template <int kHeadDim>
struct ForwardBlockShape;
// {block M, block N, warps}: FlashAttention-2's choices for A100-class shared memory, except 128 x 64 (not 128 x 128)
// at head dim 64, where a 128-wide score tile spills registers. Head dim 256 keeps 128 x 64 with 8 warps: FA2's H100
// choice, 64 x 64 with 4 warps (2 CTAs per SM), measured slower here (H200, fwd S 4096 non-causal: 274 TFLOP/s, vs
// 292 for 128 x 64 in the previous measurement; slower at 9 of the 12 forward shapes).
template <> struct ForwardBlockShape<64> { static constexpr int kM = 128, kN = 64, kWarps = 4; };
template <> struct ForwardBlockShape<96> { static constexpr int kM = 128, kN = 64, kWarps = 4; };
template <> struct ForwardBlockShape<128> { static constexpr int kM = 128, kN = 64, kWarps = 4; };
template <> struct ForwardBlockShape<192> { static constexpr int kM = 128, kN = 64, kWarps = 8; };
template <> struct ForwardBlockShape<256> { static constexpr int kM = 128, kN = 64, kWarps = 8; };

template <int kHeadDim_, ElementKind kKind>
struct ForwardTraits {
  using Element = typename ElementTypes<kKind>::Element;
  using Shape_ = ForwardBlockShape<kHeadDim_>;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = Shape_::kM;
  static constexpr int kBlockN = Shape_::kN;
  static constexpr int kWarps = Shape_::kWarps;
  static constexpr int kThreads = kWarps * 32;
  static_assert(kBlockM == 16 * kWarps || kBlockM == 32 * kWarps, "each warp owns 16 or 32 query rows");
  static_assert(kBlockM <= kMaxTileRows && kBlockN <= kMaxTileRows);

  using Tiling = HeadDimTiling<Element, kHeadDim>;
  using TiledMma = WarpTiledMma<typename ElementTypes<kKind>::MmaAtom, kWarps, 1>;
  using Smem = SmemAtoms<Element>;

  using SmemLayoutQ = decltype(tile_to_shape(typename Tiling::SmemAtom{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutKV = decltype(tile_to_shape(typename Tiling::SmemAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  using SmemLayoutVt = TransposedLayout<SmemLayoutKV, kBlockN, kHeadDim>;  // (D, N): V as the B operand of P V
  using SmemLayoutVtNoSwizzle = decltype(get_nonswizzle_portion(SmemLayoutVt{}));

  using GmemLoad = typename Tiling::template GmemLoad<kThreads>;
  using GmemStore = typename Tiling::template GmemStore<kThreads>;

  // Q, then K, then V; O reuses Q's space in the epilogue.
  static constexpr int kSmemBytes = int(sizeof(Element)) * int(cosize(SmemLayoutQ{}) + 2 * cosize(SmemLayoutKV{}));
};

// ---------------------------------------------------------------------------------------------------------------
// Backward: one CTA per (kBlockN keys, kv head, batch) iterating over the query blocks of every query head of the
// group. Three warp arrangements: S = Q K^T and dP = dO V^T ([M, N]); dK, dV += dS^T Q, P^T dO ([N, D]);
// dQ = dS K ([M, D]).
// ---------------------------------------------------------------------------------------------------------------
template <int kHeadDim>
struct BackwardBlockShape;
// {block M, block N, warps, warps along M for S/dP, warps along N for dK/dV, warps along M for dQ, Q/dO stages}
// Head dim 64: 128 x 128 blocks read K and V from shared memory once per 128 query rows instead of 64, with four warps
// along M so that each thread holds the lse/softmax_d of fewer rows (FlashAttention-2's choice for GPUs with >= 144 KB
// of shared memory; 160 KB here, so no longer the 99 KB of sm86/sm89). H200: bwd S 4096 177 -> 195 TFLOP/s.
template <> struct BackwardBlockShape<64> {
  static constexpr int kM = 128, kN = 128, kWarps = 8, kWarpsMSdP = 4, kWarpsNdKV = 4, kWarpsMdQ = 4, kStages = 2;
};
template <> struct BackwardBlockShape<96> {
  static constexpr int kM = 64, kN = 128, kWarps = 8, kWarpsMSdP = 2, kWarpsNdKV = 4, kWarpsMdQ = 4, kStages = 2;
};
template <> struct BackwardBlockShape<128> {
  static constexpr int kM = 64, kN = 128, kWarps = 8, kWarpsMSdP = 2, kWarpsNdKV = 4, kWarpsMdQ = 2, kStages = 2;
};
template <> struct BackwardBlockShape<192> {
  static constexpr int kM = 64, kN = 64, kWarps = 8, kWarpsMSdP = 4, kWarpsNdKV = 2, kWarpsMdQ = 2, kStages = 2;
};
// Single-buffered Q/dO: it fits A100's 163 KB of shared memory, and on an H200 two stages (208 KB) measured slower
// (bwd S 4096: 133 vs 159 TFLOP/s; not profiled: 208 KB of shared memory leaves ~20 KB of L1).
template <> struct BackwardBlockShape<256> {
  static constexpr int kM = 64, kN = 64, kWarps = 8, kWarpsMSdP = 4, kWarpsNdKV = 2, kWarpsMdQ = 2, kStages = 1;
};

template <int kHeadDim_, ElementKind kKind>
struct BackwardTraits {
  using Element = typename ElementTypes<kKind>::Element;
  using MmaAtom = typename ElementTypes<kKind>::MmaAtom;
  using Shape_ = BackwardBlockShape<kHeadDim_>;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = Shape_::kM;
  static constexpr int kBlockN = Shape_::kN;
  static constexpr int kWarps = Shape_::kWarps;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kStages = Shape_::kStages;
  static_assert(kStages == 1 || kStages == 2);
  static_assert(kBlockM <= kMaxTileRows && kBlockN <= kMaxTileRows);

  using Tiling = HeadDimTiling<Element, kHeadDim>;
  using Smem = SmemAtoms<Element>;
  using TiledMmaSdP = WarpTiledMma<MmaAtom, Shape_::kWarpsMSdP, kWarps / Shape_::kWarpsMSdP>;
  using TiledMmadKV = WarpTiledMma<MmaAtom, Shape_::kWarpsNdKV, kWarps / Shape_::kWarpsNdKV>;
  using TiledMmadQ = WarpTiledMma<MmaAtom, Shape_::kWarpsMdQ, kWarps / Shape_::kWarpsMdQ>;

  // Q and dO: one [M, D] tile per stage. K, V: [N, D].
  using SmemLayoutQdO = decltype(tile_to_shape(typename Tiling::SmemAtom{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutQdOt = TransposedLayout<SmemLayoutQdO, kBlockM, kHeadDim>;
  using SmemLayoutQdOtNoSwizzle = decltype(get_nonswizzle_portion(SmemLayoutQdOt{}));
  using SmemLayoutKV = decltype(tile_to_shape(typename Tiling::SmemAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  using SmemLayoutKt = TransposedLayout<SmemLayoutKV, kBlockN, kHeadDim>;
  using SmemLayoutKtNoSwizzle = decltype(get_nonswizzle_portion(SmemLayoutKt{}));

  // P and dS: [M, N] in 64-column swizzled atoms (N is a multiple of 64), read back transposed for dV and dK.
  static constexpr int kPdSCols = 64;
  static_assert(kBlockN % kPdSCols == 0);
  using SmemAtomPdS = decltype(composition(Swizzle<3, 3, 3>{},
                                           Layout<Shape<_8, Int<kPdSCols>>, Stride<Int<kPdSCols>, _1>>{}));
  using SmemLayoutPdS = decltype(tile_to_shape(SmemAtomPdS{}, Shape<Int<kBlockM>, Int<kBlockN>>{}));
  using SmemLayoutPdSt = TransposedLayout<SmemLayoutPdS, kBlockM, kBlockN>;
  using SmemLayoutPdStNoSwizzle = decltype(get_nonswizzle_portion(SmemLayoutPdSt{}));

  using GmemLoad = typename Tiling::template GmemLoad<kThreads>;
  using GmemStore = typename Tiling::template GmemStore<kThreads>;

  static constexpr int kQdOTileElems = int(cosize(SmemLayoutQdO{}));
  static constexpr int kKVTileElems = int(cosize(SmemLayoutKV{}));
  static constexpr int kPdSTileElems = int(cosize(SmemLayoutPdS{}));
  // Q stages, dO stages, K, V, P, dS. dK and dV reuse K's and V's space in the epilogue.
  static constexpr int kSmemBytes =
      int(sizeof(Element)) * (2 * kStages * kQdOTileElems + 2 * kKVTileElems + 2 * kPdSTileElems);
};

}  // namespace jax_flash::sm80
