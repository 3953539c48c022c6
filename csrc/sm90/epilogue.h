// Epilogue of one query tile: O (registers, fp32) -> 16-bit -> shared memory (stmatrix, into V's bytes) -> global
// memory with one TMA store, which clips rows past Sq and columns past the head dim; lse straight from registers.
// Tiles whose rows see no key get o = 0 and lse = -inf with plain stores.
#pragma once

#include <cmath>
#include <cstdint>

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "common/mask.h"
#include "sm90/fragments.h"
#include "sm90/kernel_traits.h"
#include "sm90/named_barriers.h"
#include "sm90/tile_scheduler.h"

namespace jax_flash::sm90 {

using namespace cute;

template <class Traits>
struct Epilogue {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr int kNumMmaThreads = Traits::kNumMmaThreads;
  // The last consumer warp issues the TMA store, always from its lane 0, so that lane's bulk-copy groups cover
  // every store of the CTA.
  static constexpr int kStoreWarp = Traits::kNumMmaWarps - 1;
  static constexpr uint32_t kSmemFullThreads = kNumMmaThreads + kWarpSize;

  template <class Params, class FragO, int kRows>
  __device__ __forceinline__ void store(const Params& params, SharedStorage& smem, const FragO& tOrO,
                                        const float (&lse)[kRows], const TileCoord& coord,
                                        int mma_thread_idx) const {
    typename Traits::TiledMmaPV mma_pv;
    Tensor tOrO_out = make_tensor_like<Element>(tOrO);
    convert_fragment(tOrO, tOrO_out);

    // O reuses V's bytes: every consumer must have finished its last O += P V.
    named_barrier_sync(kNumMmaThreads, barrier_id(NamedBarrier::kEpilogueSmemFree));
    Tensor sO = make_tensor(make_smem_ptr(smem.tensors.o.data()), typename Traits::SmemLayoutO{});
    auto smem_copy_o = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, mma_pv);
    auto thr_copy_o = smem_copy_o.get_thread_slice(mma_thread_idx);
    copy(smem_copy_o, thr_copy_o.retile_S(tOrO_out), thr_copy_o.partition_D(sO));
    // Make the generic-proxy writes visible to the TMA (async proxy) before signalling.
    cutlass::arch::fence_view_async_shared();
    named_barrier_arrive(kSmemFullThreads, barrier_id(NamedBarrier::kEpilogueSmemFull));

    store_lse(params, lse, coord, mma_thread_idx);

    const int warp = mma_thread_idx / kWarpSize;
    if (warp == kStoreWarp) {
      named_barrier_sync(kSmemFullThreads, barrier_id(NamedBarrier::kEpilogueSmemFull));
      if (mma_thread_idx % kWarpSize == 0) {
        Tensor mO = params.tma_o.get_tma_tensor(params.shape_q)(_, _, coord.head, coord.batch);
        Tensor gO = local_tile(mO, typename Params::TileQ{}, make_coord(coord.m_block, _0{}));
        auto cta_tma_o = params.tma_o.get_slice(_0{});
        copy(params.tma_o, cta_tma_o.partition_S(sO), cta_tma_o.partition_D(gO));
        tma_store_arrive();
        tma_store_wait<0>();  // the store has read O out of shared memory
        cutlass::arch::ClusterBarrier::arrive(&smem.o_read);
      }
      __syncwarp();
    }
  }

  // o = 0 and lse = -inf for every row of the tile (no row sees a key).
  template <class Params>
  __device__ __forceinline__ void store_zero(const Params& params, const TileCoord& coord, int mma_thread_idx) const {
    const AttentionParams& p = params.attn;
    const int64_t row_begin = int64_t(coord.m_block) * kBlockM;
    const int rows = int(jf_min(int64_t(kBlockM), p.seqlen_q - row_begin));
    // 16-byte chunks of a row; the head dim is a multiple of 8 16-bit elements.
    constexpr int kElementsPerChunk = 16 / sizeof(Element);
    const int chunks = int(p.head_dim) / kElementsPerChunk;
    for (int i = mma_thread_idx; i < rows * chunks; i += kNumMmaThreads) {
      const int64_t row = row_begin + i / chunks;
      Element* dst = params.o + ((int64_t(coord.batch) * p.seqlen_q + row) * p.heads_q + coord.head) * p.head_dim +
                     int64_t(i % chunks) * kElementsPerChunk;
      *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    }
    float* lse_row = params.lse + (int64_t(coord.batch) * p.heads_q + coord.head) * p.seqlen_q + row_begin;
    for (int i = mma_thread_idx; i < rows; i += kNumMmaThreads) lse_row[i] = -INFINITY;
  }

  // Once before the kernel exits: the last TMA store has completed its global writes.
  __device__ __forceinline__ void finish(int mma_thread_idx) const {
    if (mma_thread_idx == kStoreWarp * kWarpSize) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
  }

 private:
  template <class Params, int kRows>
  __device__ __forceinline__ void store_lse(const Params& params, const float (&lse)[kRows], const TileCoord& coord,
                                            int mma_thread_idx) const {
    typename Traits::TiledMmaPV mma_pv;
    Tensor coords = mma_pv.get_thread_slice(mma_thread_idx)
                        .partition_C(make_identity_tensor(select<0, 1>(typename Traits::TileShapePV{})));
    Tensor c = make_tensor(coords.data(), accumulator_rows_cols(coords.layout()));
    static_assert(decltype(size<0>(c))::value == kRows);
    // The four threads of a row hold the same lse; the one holding column 0 writes it.
    if (get<1>(c(_0{}, _0{})) != 0) return;
    const AttentionParams& p = params.attn;
    float* lse_head = params.lse + (int64_t(coord.batch) * p.heads_q + coord.head) * p.seqlen_q;
    CUTE_UNROLL
    for (int m = 0; m < kRows; ++m) {
      const int64_t row = int64_t(coord.m_block) * kBlockM + get<0>(c(m, _0{}));
      if (row < p.seqlen_q) lse_head[row] = lse[m];
    }
  }
};

}  // namespace jax_flash::sm90
