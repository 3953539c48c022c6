// Compile-time shape of one backward kernel: tile sizes, thread roles and register split, the five wgmma tiled MMAs,
// the swizzled shared-memory layouts (with their transposed views) and the shared-storage struct.
//
// One CTA owns kBlockN keys of one kv head and walks over blocks of kBlockM queries. The scores are computed
// transposed, S^T = K Q^T and dP^T = V dO^T, so that consumer warpgroup w owns keys [64 w, 64 w + 64) in every GEMM
// that produces per-key results: P^T and dS^T leave S^T's accumulators already as the register A operand of
// dV += P^T dO and dK += dS^T Q (no shared-memory round trip), and dK, dV stay in the same warpgroup's registers for
// the whole CTA. dQ = dS K needs dS across both warpgroups, so dS^T also goes to shared memory.
//
// kDkvSplitsHeadDim (large head dims): dK and dV of 128 keys would not fit in registers (256 a thread at head dim
// 256), so the CTA owns 64 keys and the warpgroups split the head dim of dK and dV instead: they compute the
// transposes dV^T += dO^T P and dK^T += Q^T dS (A = dO^T, Q^T and B = P, dS from shared memory; 128 registers a
// thread at head dim 256). S^T and dP^T [64 keys, kBlockM] are then split over the queries, and P^T goes to shared
// memory as well as dS^T.
//
// kDqInQdOStage: a step's float32 dQ tile [kBlockM, kHeadDim] is as large as its Q and dO blocks together, so it
// is staged in their bytes (Q and dO of a stage lie next to each other) once both warpgroups are done with them,
// rather than in a buffer of its own; the stage then goes back to the producer only once the dQ warp's TMA has
// read the tile too. The saved shared memory buys a second Q/dO stage at head dim 256.
#pragma once

#include "sm90/kernel_traits.h"

namespace jax_flash::sm90 {

using namespace cute;

template <class Element_, int kHeadDim_, int kBlockM_, bool kDkvSplitsHeadDim_ = false, int kStages_ = 2,
          bool kDqInQdOStage_ = false>
struct BwdKernelTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr bool kDkvSplitsHeadDim = kDkvSplitsHeadDim_;
  // Two consumer warpgroups of 64 keys each (of the same 64 keys when they split the head dim of dK and dV).
  static constexpr int kNumMmaWarpgroups = 2;
  static constexpr int kBlockN = kDkvSplitsHeadDim ? kWgmmaRows : kNumMmaWarpgroups * kWgmmaRows;
  // Q/dO (with their lse and softmax_d rows) and dS (and P) each have this many shared-memory stages.
  static constexpr int kStages = kStages_;
  static constexpr int kDsStages = 2;
  static constexpr bool kDqInQdOStage = kDqInQdOStage_;

  static_assert(kHeadDim % 64 == 0, "head-dim tiles are multiples of the 64-element swizzle-128B row");
  static_assert(kBlockM % 64 == 0, "dS is stored M-major in 64-row swizzle atoms");

  // Thread roles: warpgroup 0 holds the producer warp (TMA) and the dQ warp (TMA reduce-add); two consumer
  // warpgroups follow.
  static constexpr int kNumMmaThreads = kNumMmaWarpgroups * kWarpgroupThreads;
  static constexpr int kNumMmaWarps = kNumMmaThreads / kWarpSize;
  static constexpr int kNumProducerThreads = kWarpSize;
  static constexpr int kNumThreads = kNumMmaThreads + kWarpgroupThreads;
  static constexpr int kProducerRegisters = 24;
  static constexpr int kMmaRegisters = 240;
  // setmaxnreg only moves the registers the CTA got at launch (the per-thread count, a multiple of 8, times the
  // threads): asking for more blocks the consumers forever.
  static constexpr int kLaunchRegisters = kRegistersPerSm / kNumThreads / 8 * 8 * kNumThreads;
  static_assert(kProducerRegisters * kWarpgroupThreads + kMmaRegisters * kNumMmaThreads <= kLaunchRegisters);

  using WarpgroupsAlongRows = Layout<Shape<Int<kNumMmaWarpgroups>, _1, _1>>;
  using WarpgroupsAlongCols = Layout<Shape<_1, Int<kNumMmaWarpgroups>, _1>>;

  // S^T = K Q^T and dP^T = V dO^T: [kBlockN keys, kBlockM queries] over the head dim, both operands K-major; the
  // warpgroups split the keys, or the queries when the CTA has only their 64 keys.
  using TileShapeSdP = Shape<Int<kBlockN>, Int<kBlockM>, Int<kHeadDim>>;
  static constexpr int kSdPAtomN = kDkvSplitsHeadDim ? kBlockM / kNumMmaWarpgroups : kBlockM;
  using TiledMmaSdP = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<Int<kWgmmaRows>, Int<kSdPAtomN>, Int<kHeadDim>>>(),
      std::conditional_t<kDkvSplitsHeadDim, WarpgroupsAlongCols, WarpgroupsAlongRows>{}));
  // dV += P^T dO and dK += dS^T Q: [kBlockN keys, kHeadDim] over the queries, A from registers, B (dO or Q as
  // (head_dim, queries)) head-dim contiguous, i.e. MN-major. Split head dim: dV^T += dO^T P and dK^T += Q^T dS,
  // [kHeadDim, kBlockN] over the queries, A (dO^T, Q^T) MN-major, B (P, dS as (keys, queries)) queries
  // contiguous, i.e. K-major.
  using TileShapedKV = std::conditional_t<kDkvSplitsHeadDim, Shape<Int<kHeadDim>, Int<kBlockN>, Int<kBlockM>>,
                                          Shape<Int<kBlockN>, Int<kHeadDim>, Int<kBlockM>>>;
  using TiledMmadKV = decltype(make_tiled_mma(
      std::conditional_t<
          kDkvSplitsHeadDim,
          decltype(GMMA::ss_op_selector<Element, Element, float, Shape<Int<kWgmmaRows>, Int<kBlockN>, Int<kBlockM>>,
                                        GMMA::Major::MN, GMMA::Major::K>()),
          decltype(GMMA::rs_op_selector<Element, Element, float, Shape<Int<kWgmmaRows>, Int<kHeadDim>, Int<kBlockM>>,
                                        GMMA::Major::K, GMMA::Major::MN>())>{},
      WarpgroupsAlongRows{}));
  // dQ = dS K: [kBlockM queries, kHeadDim] over the keys; dS from shared memory (queries contiguous), K as
  // (head_dim, keys) head-dim contiguous. With 64 query rows the warpgroups split the head dim.
  using TileShapedQ = Shape<Int<kBlockM>, Int<kHeadDim>, Int<kBlockN>>;
  static constexpr bool kDqSplitsHeadDim = kBlockM == kWgmmaRows;
  using DqWarpgroupLayout = std::conditional_t<kDqSplitsHeadDim, WarpgroupsAlongCols, WarpgroupsAlongRows>;
  static constexpr int kDqAtomM = kDqSplitsHeadDim ? kBlockM : kBlockM / kNumMmaWarpgroups;
  static constexpr int kDqAtomN = kDqSplitsHeadDim ? kHeadDim / kNumMmaWarpgroups : kHeadDim;
  using TiledMmadQ = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<Int<kDqAtomM>, Int<kDqAtomN>, Int<kBlockN>>,
                           GMMA::Major::MN, GMMA::Major::MN>(),
      DqWarpgroupLayout{}));
  static_assert(size<1>(typename TiledMmaSdP::AtomShape_MNK{}) == kSdPAtomN);
  static_assert(size<1>(typename TiledMmadKV::AtomShape_MNK{}) == get<1>(TileShapedKV{}));

  // K, V: (keys, head_dim) K-major; the same bytes seen as (head_dim, keys) for dQ = dS K.
  using SmemLayoutK = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                                             Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  using SmemLayoutKt = decltype(composition(
      SmemLayoutK{}, make_layout(Shape<Int<kHeadDim>, Int<kBlockN>>{}, GenRowMajor{})));
  // Q, dO: (queries, head_dim, stage) K-major; as (head_dim, queries, stage) for dK += dS^T Q and dV += P^T dO.
  // Elements from one stage's Q (or dO) block to the next stage's; with kDqInQdOStage, dO follows Q in each stage.
  static constexpr int kQdOStageStride = (kDqInQdOStage ? 2 : 1) * kBlockM * kHeadDim;
  using SmemLayoutQ = std::conditional_t<
      kDqInQdOStage,
      decltype(composition(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                                         Shape<Int<kBlockM>, Int<kHeadDim>, Int<2 * kStages>>{}),
                           make_layout(Shape<Int<kBlockM>, Int<kHeadDim>, Int<kStages>>{},
                                       make_stride(_1{}, Int<kBlockM>{}, Int<kQdOStageStride>{})))),
      decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                             Shape<Int<kBlockM>, Int<kHeadDim>, Int<kStages>>{}))>;
  using SmemLayoutQt = decltype(composition(
      SmemLayoutQ{}, make_layout(Shape<Int<kHeadDim>, Int<kBlockM>, Int<kStages>>{},
                                 make_stride(Int<kBlockM>{}, _1{}, Int<kBlockM * kHeadDim>{}))));
  // dS: (queries, keys, stage) with queries contiguous (the MN-major A operand of dQ = dS K); written from the
  // S^T accumulators through the transposed view (keys, queries, stage), which is also the K-major B operand of
  // dK^T += Q^T dS. P^T, when it goes through shared memory, has the same layout.
  using SmemLayoutdS = decltype(tile_to_shape(GMMA::Layout_MN_SW128_Atom<Element>{},
                                              Shape<Int<kBlockM>, Int<kBlockN>, Int<kDsStages>>{}));
  using SmemLayoutdSt = decltype(composition(
      SmemLayoutdS{}, make_layout(Shape<Int<kBlockN>, Int<kBlockM>, Int<kDsStages>>{},
                                  make_stride(Int<kBlockM>{}, _1{}, Int<kBlockM * kBlockN>{}))));
  // The float32 dQ tile of one query block [kBlockM, kHeadDim], which the TMA reduce-add reads. The consumers store
  // their accumulators into it 64 bits at a time: a half-warp writes 8 floats (32 bytes) of each of 4 consecutive
  // rows. In rows of a multiple of 128 bytes those land in the same 32 bytes of the bank space, and the 128-byte
  // swizzle spreads the four rows over only half the banks (two wavefronts a store instead of one). Rows padded by
  // kDqPadColumns floats (32 bytes) put the four rows' 32 bytes side by side in all 32 banks. The TMA box is the
  // padded row; its padding columns lie past D, so the reduce-add skips them. With kDqInQdOStage the tile must fill
  // the Q/dO stage exactly, so it keeps the swizzled unpadded layout.
  static constexpr int kDqPadColumns = kDqInQdOStage ? 0 : 8;
  static constexpr int kDqRowFloats = kHeadDim + kDqPadColumns;
  using TileDqTma = Shape<Int<kBlockM>, Int<kDqRowFloats>>;
  using SmemLayoutdQTma = std::conditional_t<
      kDqInQdOStage,
      decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<float>{}, Shape<Int<kBlockM>, Int<kHeadDim>>{})),
      Layout<TileDqTma, Stride<Int<kDqRowFloats>, _1>>>;
  // The consumers' view: the tile without its padding columns.
  using SmemLayoutdQ = std::conditional_t<kDqInQdOStage, SmemLayoutdQTma,
                                          Layout<Shape<Int<kBlockM>, Int<kHeadDim>>, Stride<Int<kDqRowFloats>, _1>>>;

  using Pipeline = TmaPipeline<kStages>;
  // The producer warp's 32 lanes also arrive on a Q stage's full barrier, after writing its lse and softmax_d.
  static constexpr int kQFullArrivals = 1 + kNumProducerThreads;
  // A stage is released by every consumer thread (each read its lse and softmax_d with ordinary loads), and also by
  // the dQ warp when the stage holds the dQ tile (once its TMA has read the tile).
  static constexpr int kQEmptyArrivals = kNumMmaThreads + (kDqInQdOStage ? 1 : 0);
  static_assert(!kDqInQdOStage || (kDqSplitsHeadDim && kBlockM * kHeadDim * sizeof(float) ==
                                                           2 * kBlockM * kHeadDim * sizeof(Element)),
                "the dQ tile must fill exactly the Q and dO blocks of a stage");

  struct SharedStorage {
    // K and V for the whole CTA; the epilogue writes dK and dV into their bytes.
    cute::array_aligned<Element, cosize_v<SmemLayoutK>, kSwizzleAlignment> k;
    cute::array_aligned<Element, cosize_v<SmemLayoutK>, kSwizzleAlignment> v;
    // Q (and, with kDqInQdOStage, dO after Q in each stage).
    cute::array_aligned<Element, kStages * kQdOStageStride, kSwizzleAlignment> q;
    std::conditional_t<kDqInQdOStage, cute::array<Element, 0>,
                       cute::array_aligned<Element, cosize_v<SmemLayoutQ>, kSwizzleAlignment>>
        dout;
    cute::array_aligned<Element, cosize_v<SmemLayoutdS>, kSwizzleAlignment> ds;
    std::conditional_t<kDkvSplitsHeadDim, cute::array_aligned<Element, cosize_v<SmemLayoutdS>, kSwizzleAlignment>,
                       cute::array<Element, 0>>
        p;
    std::conditional_t<kDqInQdOStage, cute::array<float, 0>,
                       cute::array_aligned<float, cosize_v<SmemLayoutdQTma>, kSwizzleAlignment>>
        dq;
    // Per Q stage: lse * log2(e) of each query row (+inf for rows that see no key or lie past Sq, so P = 0),
    // and softmax_d = rowsum(dO o) - dlse.
    float lse_log2[kStages][kBlockM];
    float softmax_d[kStages][kBlockM];
    typename Pipeline::SharedStorage pipeline_q;
    // K and V have landed (TMA transaction barrier, one arrival).
    uint64_t kv_full;
  };

  __device__ __forceinline__ static Element* dout_smem(SharedStorage& smem) {
    if constexpr (kDqInQdOStage) {
      return smem.q.data() + kBlockM * kHeadDim;
    } else {
      return smem.dout.data();
    }
  }
  // Where the dQ tile of a step that read Q/dO stage `stage` goes.
  __device__ __forceinline__ static float* dq_smem(SharedStorage& smem, int stage) {
    if constexpr (kDqInQdOStage) {
      return reinterpret_cast<float*>(smem.q.data() + stage * kQdOStageStride);
    } else {
      return smem.dq.data();
    }
  }

  // One Q stage carries a block of Q and the same block of dO.
  static constexpr uint32_t kTmaBytesQdO = 2 * kBlockM * kHeadDim * sizeof(Element);
  static constexpr uint32_t kTmaBytesK = kBlockN * kHeadDim * sizeof(Element);
};

}  // namespace jax_flash::sm90
