// Epilogues: from fp32 accumulators in registers to 16-bit outputs in global memory, staged through shared memory
// so that the global stores are 16-byte and coalesced, and predicated on the rows and columns that exist.
#pragma once

#include <cute/tensor.hpp>

#include "common/mask.h"
#include "sm80/fragment_layout.h"
#include "sm80/score_transform.h"
#include "sm80/tile_copy.h"

namespace jax_flash::sm80 {

using namespace cute;

// Writes the [kRows, kHeadDim] accumulator `acc` (partitioned by `mma`), converted to Element, into the tile `gOut`
// of which the first valid_rows rows and head_dim columns exist. `smem` must be free (all warps past a barrier).
template <typename Traits, int kRows, typename TiledMma, typename Acc, typename TensorOut, typename SmemLayout>
__device__ __forceinline__ void store_accumulator_tile(const TiledMma& mma, const Acc& acc, TensorOut&& gOut,
                                                       typename Traits::Element* smem, SmemLayout smem_layout,
                                                       int64_t valid_rows, int64_t head_dim) {
  using Element = typename Traits::Element;
  constexpr int kHeadDim = Traits::kHeadDim;
  const int tid = threadIdx.x;
  Tensor sOut = make_tensor(make_smem_ptr(smem), smem_layout);
  Tensor converted = convert_fragment<Element>(acc);
  auto copy_to_smem = make_tiled_copy_C(typename Traits::Smem::Store{}, mma);
  auto thr_to_smem = copy_to_smem.get_thread_slice(tid);
  cute::copy(copy_to_smem, thr_to_smem.retile_S(converted), thr_to_smem.partition_D(sOut));
  __syncthreads();

  typename Traits::GmemStore gmem_store;
  auto gmem_thr = gmem_store.get_thread_slice(tid);
  Tensor tOs = gmem_thr.partition_S(sOut);
  Tensor tOg = gmem_thr.partition_D(gOut);
  Tensor tOr = make_tensor<Element>(shape(tOs));
  cute::copy(gmem_store, tOs, tOr);
  Tensor tOc = gmem_thr.partition_D(make_identity_tensor(Shape<Int<kRows>, Int<kHeadDim>>{}));
  store_tile(gmem_store, tOr, tOg, tOc, column_predicate(tOc, head_dim), valid_rows);
}

// Forward: o = acc_o / rowsum and lse for the rows of the block that exist.
template <typename Traits>
struct ForwardEpilogue {
  template <typename AccO, typename Softmax, typename TensorO, typename TensorLse>
  __device__ static void store(const AttentionParams& p, const ScoreScales& scales, IndexRange rows, AccO& acc_o,
                               Softmax& softmax, TensorO&& gO, TensorLse&& gLse, typename Traits::Element* smem) {
    constexpr int kBlockM = Traits::kBlockM;
    constexpr int kHeadDim = Traits::kHeadDim;
    Tensor acc_o_rc = as_rowcol(acc_o);
    constexpr int kRows = decltype(size<0>(acc_o_rc))::value;
    float lse[kRows];
    softmax.finalize(acc_o_rc, scales.score_scale, lse);

    typename Traits::TiledMma mma;
    auto thr_mma = mma.get_thread_slice(threadIdx.x);
    // The thread that holds column 0 of its rows writes their lse.
    Tensor coords = as_rowcol(thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{})));
    if (get<1>(coords(0, 0)) == 0) {
      CUTE_UNROLL
      for (int r = 0; r < kRows; ++r) {
        const int row = get<0>(coords(r, 0));
        if (rows.begin + row < rows.end) gLse(row) = lse[r];
      }
    }

    cute::cp_async_wait<0>();
    __syncthreads();  // Q's space becomes O's: the Q load has landed and every warp is done reading it
    store_accumulator_tile<Traits, kBlockM>(mma, acc_o, gO, smem, typename Traits::SmemLayoutQ{},
                                            rows.end - rows.begin, p.head_dim);
  }
};

}  // namespace jax_flash::sm80
