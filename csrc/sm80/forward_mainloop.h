// The forward kernel's loop over the key blocks one query block sees (FlashAttention-2): S = Q K^T on tensor cores,
// optional softcap, the mask on boundary blocks only, the online softmax, O += P V with P kept in registers.
//
// Shared memory holds Q, one K tile and one V tile. cp.async overlaps the load of V(n) with S(n) = Q K(n)^T, and
// the load of K(n-1) with the softmax and P V(n). Key blocks run from last to first, so the partial block at the
// end of the sequence (and the causal diagonal) come first.
#pragma once

#include <cute/tensor.hpp>

#include "common/mask.h"
#include "sm80/block_gemm.h"
#include "sm80/fragment_layout.h"
#include "sm80/mask.h"
#include "sm80/score_transform.h"
#include "sm80/softmax.h"
#include "sm80/tile_copy.h"

namespace jax_flash::sm80 {

using namespace cute;

template <typename Traits>
struct ForwardMainloop {
  using Element = typename Traits::Element;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;

  // gQ: [kBlockM, kHeadDim] tile of this block's queries; gK, gV: [kBlockN, kHeadDim, key blocks] of its kv head.
  // rows: the query rows of the block that exist; keys: the keys any of them sees.
  template <typename TensorQ, typename TensorKV, typename AccO, typename Softmax>
  __device__ static void run(const AttentionParams& p, const ScoreScales& scales, IndexRange rows, IndexRange keys,
                             const TensorQ& gQ, const TensorKV& gK, const TensorKV& gV, Element* smem, AccO& acc_o,
                             Softmax& softmax) {
    const int tid = threadIdx.x;
    Tensor sQ = make_tensor(make_smem_ptr(smem), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(sQ.data() + cosize(typename Traits::SmemLayoutQ{}), typename Traits::SmemLayoutKV{});
    Tensor sV = make_tensor(sK.data() + cosize(typename Traits::SmemLayoutKV{}), typename Traits::SmemLayoutKV{});
    Tensor sVt = make_tensor(sV.data(), typename Traits::SmemLayoutVt{});
    Tensor sVtNoSwizzle = make_tensor(sV.data(), typename Traits::SmemLayoutVtNoSwizzle{});

    // Global -> shared.
    typename Traits::GmemLoad gmem_load;
    auto gmem_thr = gmem_load.get_thread_slice(tid);
    Tensor tQgQ = gmem_thr.partition_S(gQ);
    Tensor tQsQ = gmem_thr.partition_D(sQ);
    Tensor tKgK = gmem_thr.partition_S(gK);  // (CPY, CPY_N, CPY_K, key blocks)
    Tensor tKsK = gmem_thr.partition_D(sK);
    Tensor tVgV = gmem_thr.partition_S(gV);
    Tensor tVsV = gmem_thr.partition_D(sV);
    Tensor tQc = gmem_thr.partition_S(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    Tensor tKVc = gmem_thr.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));
    Tensor col_ok = column_predicate(tQc, p.head_dim);  // the same columns for Q, K and V

    // Shared -> registers -> tensor cores.
    typename Traits::TiledMma mma;
    auto thr_mma = mma.get_thread_slice(tid);
    Tensor tSrQ = thr_mma.partition_fragment_A(sQ);
    Tensor tSrK = thr_mma.partition_fragment_B(sK);
    Tensor tOrVt = thr_mma.partition_fragment_B(sVtNoSwizzle);
    auto copy_q = make_tiled_copy_A(typename Traits::Smem::Load{}, mma);
    auto copy_k = make_tiled_copy_B(typename Traits::Smem::Load{}, mma);
    auto copy_v = make_tiled_copy_B(typename Traits::Smem::LoadTransposed{}, mma);
    auto thr_copy_q = copy_q.get_thread_slice(tid);
    auto thr_copy_k = copy_k.get_thread_slice(tid);
    auto thr_copy_v = copy_v.get_thread_slice(tid);
    auto operand_q = smem_operand(copy_q, thr_copy_q, thr_copy_q.partition_S(sQ), tSrQ);
    auto operand_k = smem_operand(copy_k, thr_copy_k, thr_copy_k.partition_S(sK), tSrK);
    auto operand_v = smem_operand(copy_v, thr_copy_v, thr_copy_v.partition_S(sVt), tOrVt);

    // (row, col) within the [kBlockM, kBlockN] score block of each accumulator entry, in the (rows, cols) view.
    Tensor score_coords = as_rowcol(thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{})));
    Tensor acc_o_rc = as_rowcol(acc_o);

    load_tile(gmem_load, tQgQ, tQsQ, tQc, col_ok, rows.end - rows.begin);
    if (keys.empty()) {
      cute::cp_async_fence();
      return;
    }
    const int first_block = int(keys.begin / kBlockN);
    const int last_block = int((keys.end - 1) / kBlockN);
    load_tile(gmem_load, tKgK(_, _, _, last_block), tKsK, tKVc, col_ok, p.seqlen_k - int64_t(last_block) * kBlockN);
    cute::cp_async_fence();

    for (int n = last_block; n >= first_block; --n) {
      const IndexRange block{int64_t(n) * kBlockN, int64_t(n + 1) * kBlockN};
      Tensor acc_s = partition_fragment_C(mma, Shape<Int<kBlockM>, Int<kBlockN>>{});
      clear(acc_s);
      cute::cp_async_wait<0>();
      __syncthreads();  // K(n) has landed; every warp is done with V(n+1)
      load_tile(gmem_load, tVgV(_, _, _, n), tVsV, tKVc, col_ok, p.seqlen_k - block.begin);
      cute::cp_async_fence();

      gemm_ss(mma, acc_s, operand_q, operand_k);
      if (scales.softcapped) apply_softcap(acc_s, scales.tanh_in);
      Tensor scores = as_rowcol(acc_s);
      if (!block_fully_visible(p, rows, block)) {
        mask_block<kBlockN>(score_coords, p, rows.begin, block.begin,
                            [&](int r, int c) { scores(r, c) = kNegInf; });
      }

      cute::cp_async_wait<0>();
      __syncthreads();  // V(n) has landed; every warp is done with K(n)
      if (n > first_block) {
        load_tile(gmem_load, tKgK(_, _, _, n - 1), tKsK, tKVc, col_ok, p.seqlen_k - block.begin + kBlockN);
        cute::cp_async_fence();
      }

      softmax.update(scores, acc_o_rc, scales.score_scale_log2);
      Tensor probs = convert_fragment<Element>(acc_s);
      gemm_rs(mma, acc_o, make_tensor(probs.data(), accumulator_as_operand_a(probs.layout())), operand_v);
    }
  }
};

}  // namespace jax_flash::sm80
