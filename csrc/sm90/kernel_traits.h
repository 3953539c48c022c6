// Compile-time shape of one forward kernel: tile sizes, thread roles and register split, the wgmma tiled MMAs,
// the swizzled shared-memory layouts and the shared-storage struct. Every other sm90 piece is parameterised by it.
#pragma once

// Key blocks such as 176 need wgmma N shapes that CuTe's selectors only offer with this macro, which must be set
// before any CuTe header is parsed: a compile definition of every sm90 translation unit.
#ifndef CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED
#error "compile the sm90 kernels with -DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED"
#endif

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_types.h>

#include "sm90/pipeline.h"
#include "sm90/tile_scheduler.h"

namespace jax_flash::sm90 {

using namespace cute;

constexpr int kWarpSize = 32;
constexpr int kWarpgroupThreads = 128;
// wgmma computes 64 rows per warpgroup: a tile of kBlockM query rows has kBlockM / 64 consumer warpgroups.
constexpr int kWgmmaRows = 64;
// Registers of one SM (the kernel runs one CTA per SM) that setmaxnreg redistributes between the roles.
constexpr int kRegistersPerSm = 64 * 1024;
// A swizzle-128B atom repeats every 1024 bytes; TMA and wgmma both address it from 1024-byte aligned buffers.
constexpr int kSwizzleAlignment = 1024;

// kPingPong: consumer warpgroups take turns on the tensor cores (named barriers), so one's softmax runs under the
// other's GEMMs. kIntraWarpgroupOverlap: issue S = Q K^T of block j+1 and O += P V of block j together and do the
// softmax of block j+1 while O += P V runs.
template <class Element_, int kHeadDim_, int kBlockM_, int kBlockN_, bool kPingPong_, bool kIntraWarpgroupOverlap_>
struct FwdKernelTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr bool kPingPong = kPingPong_;
  static constexpr bool kIntraWarpgroupOverlap = kIntraWarpgroupOverlap_;
  // K and V each have their own pipeline of this many shared-memory stages.
  static constexpr int kStages = 2;
  // With large head dims O is 128 registers a thread: rescale it while S = Q K^T of the next block runs, rather
  // than after O += P V completes, so the rescale hides under a GEMM.
  static constexpr bool kRescaleOBeforePV = kIntraWarpgroupOverlap && kHeadDim > 128;

  static_assert(kHeadDim % 64 == 0, "head-dim tiles are multiples of the 64-element swizzle-128B row");
  static_assert(kBlockM % kWgmmaRows == 0 && kBlockN % 16 == 0, "wgmma tile granularity");

  // Thread roles: warpgroup 0 is the producer (one warp issues every TMA), the rest are consumers.
  static constexpr int kNumMmaWarpgroups = kBlockM / kWgmmaRows;
  static_assert(kNumMmaWarpgroups == 2 || kNumMmaWarpgroups == 3, "2 or 3 consumer warpgroups");
  static constexpr int kNumMmaThreads = kNumMmaWarpgroups * kWarpgroupThreads;
  static constexpr int kNumMmaWarps = kNumMmaThreads / kWarpSize;
  static constexpr int kNumProducerThreads = kWarpSize;
  static constexpr int kNumThreads = kNumMmaThreads + kWarpgroupThreads;
  // setmaxnreg: the producer keeps a minimum, the consumers share the rest (values multiples of 8).
  static constexpr int kProducerRegisters = kNumMmaWarpgroups == 2 ? 24 : 32;
  static constexpr int kMmaRegisters = kNumMmaWarpgroups == 2 ? 240 : 160;
  static_assert(kProducerRegisters * kWarpgroupThreads + kMmaRegisters * kNumMmaThreads <= kRegistersPerSm);

  // GEMM-I S = Q K^T [kBlockM, kBlockN] over kHeadDim; GEMM-II O = P V [kBlockM, kHeadDim] over kBlockN.
  using TileShapeQK = Shape<Int<kBlockM>, Int<kBlockN>, Int<kHeadDim>>;
  using TileShapePV = Shape<Int<kBlockM>, Int<kHeadDim>, Int<kBlockN>>;
  using WarpgroupLayout = Layout<Shape<Int<kNumMmaWarpgroups>, _1, _1>>;
  // Q and K from shared memory (both K-major, i.e. head dim contiguous).
  using TiledMmaQK =
      decltype(make_tiled_mma(GMMA::ss_op_selector<Element, Element, float, TileShapeQK>(), WarpgroupLayout{}));
  // P from registers (the softmax output never touches shared memory); V from shared memory as it lies in
  // memory, head dim contiguous, which is MN-major for this GEMM.
  using TiledMmaPV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, TileShapePV, GMMA::Major::K, GMMA::Major::MN>(),
      WarpgroupLayout{}));
  // One wgmma instruction per 16-wide k step, spanning the whole tile width (not a sum of narrower ones).
  static_assert(size<1>(typename TiledMmaQK::AtomShape_MNK{}) == kBlockN);
  static_assert(size<1>(typename TiledMmaPV::AtomShape_MNK{}) == kHeadDim);

  // Shared-memory tiles, swizzle-128B so that TMA writes and wgmma reads are bank-conflict free.
  using SmemLayoutQ = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                                             Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutK = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                                             Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  // V seen as (head_dim, keys, stage) with head_dim contiguous: the B operand of O = P V.
  using SmemLayoutVt = decltype(tile_to_shape(GMMA::Layout_MN_SW128_Atom<Element>{},
                                              Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{}, Step<_2, _1, _3>{}));
  using SmemLayoutO = SmemLayoutQ;

  using Pipeline = TmaPipeline<kStages>;

  struct SharedStorage {
    union Tensors {
      struct Mainloop {
        // V first: the epilogue's O tile reuses V's bytes once the last O += P V of a tile has completed.
        cute::array_aligned<Element, cosize_v<SmemLayoutVt>, kSwizzleAlignment> v;
        cute::array_aligned<Element, cosize_v<SmemLayoutQ>, kSwizzleAlignment> q;
        cute::array_aligned<Element, cosize_v<SmemLayoutK>, kSwizzleAlignment> k;
      } mainloop;
      cute::array_aligned<Element, cosize_v<SmemLayoutO>, kSwizzleAlignment> o;
    } tensors;
    typename Pipeline::SharedStorage pipeline_k;
    typename Pipeline::SharedStorage pipeline_v;
    // Q of the current tile has landed (TMA transaction barrier, one arrival: the producer).
    uint64_t q_full;
    // The epilogue's TMA store has read O out of shared memory, so V's bytes may be overwritten (one arrival).
    uint64_t o_read;
    // The next tile index, handed from the producer warp to the consumers by the dynamic scheduler.
    typename TileScheduler<kNumMmaThreads, kNumProducerThreads>::SharedStorage scheduler;
  };
  static_assert(cosize_v<SmemLayoutO> <= cosize_v<SmemLayoutVt>, "the O tile must fit in V's bytes");

  static constexpr uint32_t kTmaBytesQ = kBlockM * kHeadDim * sizeof(Element);
  static constexpr uint32_t kTmaBytesK = kBlockN * kHeadDim * sizeof(Element);
  static constexpr uint32_t kTmaBytesV = kTmaBytesK;
};

}  // namespace jax_flash::sm90
