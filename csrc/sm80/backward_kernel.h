// The backward main kernel (FlashAttention-2): one CTA per (block of kBlockN keys, kv head, batch). It keeps dK and
// dV for its keys in registers while it walks over the query blocks that see those keys, for every query head of the
// kv head's group (so GQA/MQA gradients are summed over the group in float32, with no atomics and no repeated K/V).
// For each query block it recomputes P from the saved lse and accumulates
//   dV += P^T dO,   dS = P * (dP - softmax_d) [* (1 - tanh^2) with softcap],   dK += dS^T Q,   dQ += dS K,
// dQ into the float32 workspace with atomics. dS here is the gradient with respect to q.k up to the factor
// softmax_scale, which is applied once to dK here and to dQ in the postprocess.
//
// Shared memory: K and V for the whole CTA, Q and dO in kStages stages (with 2, the next query block loads while this
// one computes), P and dS for the transposed MMAs.
#pragma once

#include <cute/tensor.hpp>

#include "common/dq_order.h"
#include "common/mask.h"
#include "sm80/atomic_accumulate.h"
#include "sm80/block_gemm.h"
#include "sm80/epilogue.h"
#include "sm80/fragment_layout.h"
#include "sm80/kernel_params.h"
#include "sm80/mask.h"
#include "sm80/score_transform.h"
#include "sm80/softmax.h"
#include "sm80/tile_copy.h"

namespace jax_flash::sm80 {

using namespace cute;

// The same partitioned shared-memory tensor, moved to another stage of a multi-stage buffer.
template <typename Tensor_>
__device__ __forceinline__ auto at_stage(const Tensor_& t, int offset) {
  return make_tensor(t.data() + offset, t.layout());
}

template <typename Traits>
__global__ void __launch_bounds__(Traits::kThreads, 1) backward_kernel(const BackwardArgs args) {
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kStages = Traits::kStages;
  constexpr int kQdOTile = Traits::kQdOTileElems;
  extern __shared__ __align__(128) unsigned char smem_bytes[];
  Element* smem = reinterpret_cast<Element*>(smem_bytes);
  const int tid = threadIdx.x;

  const AttentionParams& p = args.params;
  const ScoreScales scales = ScoreScales::from(p);
  const int64_t n_block = blockIdx.x;
  const int64_t kv_head = blockIdx.y;
  const int64_t batch = blockIdx.z;
  const IndexRange keys{n_block * kBlockN, jf_min((n_block + 1) * kBlockN, p.seqlen_k)};
  // The whole block, past Sk where it is partial: such a block never counts as fully visible, so it gets masked.
  const IndexRange key_block{n_block * kBlockN, (n_block + 1) * kBlockN};
  const IndexRange queries = visible_queries(p, keys);
  const int64_t first_m_block = queries.begin / kBlockM;
  const int64_t m_blocks = queries.empty() ? 0 : (queries.end - 1) / kBlockM - first_m_block + 1;
  const int64_t group = p.group_size();
  const int64_t tiles = m_blocks * group;  // (query head, query block) pairs, head-major

  // Offsets inside a tile fit 32 bits (the handler checks heads x head_dim); tile origins are 64-bit.
  const int64_t q_row_stride = p.q_row_stride();
  const int64_t kv_row_stride = p.kv_row_stride();
  const int64_t kv_offset = (batch * p.seqlen_k + keys.begin) * kv_row_stride + kv_head * p.head_dim;
  auto kv_tile_layout = make_layout(Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_stride(int(kv_row_stride), _1{}));
  auto q_tile_layout = make_layout(Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_stride(int(q_row_stride), _1{}));
  const int head_dim = int(p.head_dim);

  // Shared memory.
  Element* smem_q = smem;
  Element* smem_do = smem_q + kStages * kQdOTile;
  Element* smem_k = smem_do + kStages * kQdOTile;
  Element* smem_v = smem_k + Traits::kKVTileElems;
  Element* smem_p = smem_v + Traits::kKVTileElems;
  Element* smem_ds = smem_p + Traits::kPdSTileElems;
  Tensor sQ = make_tensor(make_smem_ptr(smem_q), typename Traits::SmemLayoutQdO{});  // stage 0
  Tensor sdO = make_tensor(make_smem_ptr(smem_do), typename Traits::SmemLayoutQdO{});
  Tensor sQt = make_tensor(make_smem_ptr(smem_q), typename Traits::SmemLayoutQdOt{});
  Tensor sdOt = make_tensor(make_smem_ptr(smem_do), typename Traits::SmemLayoutQdOt{});
  Tensor sQtNoSwizzle = make_tensor(make_smem_ptr(smem_q), typename Traits::SmemLayoutQdOtNoSwizzle{});
  Tensor sK = make_tensor(make_smem_ptr(smem_k), typename Traits::SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(smem_v), typename Traits::SmemLayoutKV{});
  Tensor sKt = make_tensor(make_smem_ptr(smem_k), typename Traits::SmemLayoutKt{});
  Tensor sKtNoSwizzle = make_tensor(make_smem_ptr(smem_k), typename Traits::SmemLayoutKtNoSwizzle{});
  Tensor sP = make_tensor(make_smem_ptr(smem_p), typename Traits::SmemLayoutPdS{});
  Tensor sdS = make_tensor(make_smem_ptr(smem_ds), typename Traits::SmemLayoutPdS{});
  Tensor sPt = make_tensor(make_smem_ptr(smem_p), typename Traits::SmemLayoutPdSt{});
  Tensor sdSt = make_tensor(make_smem_ptr(smem_ds), typename Traits::SmemLayoutPdSt{});
  Tensor sPdStNoSwizzle = make_tensor(make_smem_ptr(smem_p), typename Traits::SmemLayoutPdStNoSwizzle{});

  // Global -> shared.
  typename Traits::GmemLoad gmem_load;
  auto gmem_thr = gmem_load.get_thread_slice(tid);
  Tensor tQc = gmem_thr.partition_S(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  Tensor tKVc = gmem_thr.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  Tensor col_ok = column_predicate(tQc, p.head_dim);
  Tensor tQsQ = gmem_thr.partition_D(sQ);
  Tensor tdOsdO = gmem_thr.partition_D(sdO);

  // Tiles run over the query blocks of one head, then the next head of the group: (head, first row) of a tile.
  struct QueryTile {
    int64_t head;
    int64_t row0;
  };
  const int64_t first_row = first_m_block * kBlockM;
  const int64_t end_row = (first_m_block + m_blocks) * kBlockM;
  auto next_tile = [&](QueryTile tile) {
    tile.row0 += kBlockM;
    if (tile.row0 == end_row) tile = {tile.head + 1, first_row};
    return tile;
  };
  auto q_tile_offset = [&](QueryTile tile) {
    return (batch * p.seqlen_q + tile.row0) * q_row_stride + tile.head * p.head_dim;
  };
  auto load_query_tile = [&](QueryTile tile, int stage) {
    const int64_t row0 = tile.row0;
    const int64_t offset = q_tile_offset(tile);
    Tensor gQ = make_tensor(make_gmem_ptr(static_cast<const Element*>(args.q) + offset), q_tile_layout);
    Tensor gdO = make_tensor(make_gmem_ptr(static_cast<const Element*>(args.dout) + offset), q_tile_layout);
    load_tile(gmem_load, gmem_thr.partition_S(gQ), at_stage(tQsQ, stage * kQdOTile), tQc, col_ok,
              p.seqlen_q - row0);
    load_tile(gmem_load, gmem_thr.partition_S(gdO), at_stage(tdOsdO, stage * kQdOTile), tQc, col_ok,
              p.seqlen_q - row0);
  };

  // S = Q K^T and dP = dO V^T.
  typename Traits::TiledMmaSdP mma_sdp;
  auto thr_sdp = mma_sdp.get_thread_slice(tid);
  Tensor tSrQ = thr_sdp.partition_fragment_A(sQ);
  Tensor tSrK = thr_sdp.partition_fragment_B(sK);
  Tensor tdPrdO = thr_sdp.partition_fragment_A(sdO);
  Tensor tdPrV = thr_sdp.partition_fragment_B(sV);
  auto copy_qdo = make_tiled_copy_A(typename Traits::Smem::Load{}, mma_sdp);
  auto copy_kv = make_tiled_copy_B(typename Traits::Smem::Load{}, mma_sdp);
  auto thr_copy_qdo = copy_qdo.get_thread_slice(tid);
  auto thr_copy_kv = copy_kv.get_thread_slice(tid);
  Tensor tSsQ = thr_copy_qdo.partition_S(sQ);
  Tensor tdPsdO = thr_copy_qdo.partition_S(sdO);
  Tensor tSsK = thr_copy_kv.partition_S(sK);
  Tensor tdPsV = thr_copy_kv.partition_S(sV);
  auto copy_pds = make_tiled_copy_C(typename Traits::Smem::Store{}, mma_sdp);
  auto thr_copy_pds = copy_pds.get_thread_slice(tid);
  Tensor tPsP = thr_copy_pds.partition_D(sP);
  Tensor tdSsdS = thr_copy_pds.partition_D(sdS);

  // dV += P^T dO and dK += dS^T Q.
  typename Traits::TiledMmadKV mma_dkv;
  auto thr_dkv = mma_dkv.get_thread_slice(tid);
  Tensor tdVrPt = thr_dkv.partition_fragment_A(sPdStNoSwizzle);
  Tensor tdVrdO = thr_dkv.partition_fragment_B(sQtNoSwizzle);
  Tensor tdKrdSt = thr_dkv.partition_fragment_A(sPdStNoSwizzle);
  Tensor tdKrQt = thr_dkv.partition_fragment_B(sQtNoSwizzle);
  auto copy_pdst = make_tiled_copy_A(typename Traits::Smem::LoadTransposed{}, mma_dkv);
  auto copy_qdot = make_tiled_copy_B(typename Traits::Smem::LoadTransposed{}, mma_dkv);
  auto thr_copy_pdst = copy_pdst.get_thread_slice(tid);
  auto thr_copy_qdot = copy_qdot.get_thread_slice(tid);
  Tensor tdVsPt = thr_copy_pdst.partition_S(sPt);
  Tensor tdKsdSt = thr_copy_pdst.partition_S(sdSt);
  Tensor tdVsdOt = thr_copy_qdot.partition_S(sdOt);
  Tensor tdKsQt = thr_copy_qdot.partition_S(sQt);

  // dQ = dS K.
  typename Traits::TiledMmadQ mma_dq;
  auto thr_dq = mma_dq.get_thread_slice(tid);
  Tensor tdQrdS = thr_dq.partition_fragment_A(sdS);
  Tensor tdQrKt = thr_dq.partition_fragment_B(sKtNoSwizzle);
  auto copy_ds = make_tiled_copy_A(typename Traits::Smem::Load{}, mma_dq);
  auto copy_kt = make_tiled_copy_B(typename Traits::Smem::LoadTransposed{}, mma_dq);
  auto thr_copy_ds = copy_ds.get_thread_slice(tid);
  auto thr_copy_kt = copy_kt.get_thread_slice(tid);
  Tensor tdQsdS = thr_copy_ds.partition_S(sdS);
  Tensor tdQsKt = thr_copy_kt.partition_S(sKt);
  Tensor dq_coords = thr_dq.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));

  // (row, col) within the [kBlockM, kBlockN] score block, in the (rows, cols) view of the S/dP accumulators.
  Tensor score_coords = as_rowcol(thr_sdp.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{})));
  constexpr int kRows = decltype(size<0>(score_coords))::value;

  Tensor acc_dk = partition_fragment_C(mma_dkv, Shape<Int<kBlockN>, Int<kHeadDim>>{});
  Tensor acc_dv = partition_fragment_C(mma_dkv, Shape<Int<kBlockN>, Int<kHeadDim>>{});
  clear(acc_dk);
  clear(acc_dv);

  // Prologue: K, V and the first query tile in one group.
  Tensor gK = make_tensor(make_gmem_ptr(static_cast<const Element*>(args.k) + kv_offset), kv_tile_layout);
  Tensor gV = make_tensor(make_gmem_ptr(static_cast<const Element*>(args.v) + kv_offset), kv_tile_layout);
  load_tile(gmem_load, gmem_thr.partition_S(gK), gmem_thr.partition_D(sK), tKVc, col_ok, keys.end - keys.begin);
  load_tile(gmem_load, gmem_thr.partition_S(gV), gmem_thr.partition_D(sV), tKVc, col_ok, keys.end - keys.begin);
  QueryTile tile{kv_head * group, first_row};
  if (tiles > 0) load_query_tile(tile, 0);
  cute::cp_async_fence();

  for (int64_t t = 0; t < tiles; ++t, tile = next_tile(tile)) {
    const int stage = kStages == 2 ? int(t & 1) : 0;
    const int q_stage = stage * kQdOTile;
    const int64_t row0 = tile.row0;
    const IndexRange rows{row0, jf_min(row0 + kBlockM, p.seqlen_q)};
    const int valid_rows = int(rows.end - rows.begin);

    // lse (in log2 units) and softmax_d of this thread's rows. Rows past Sq and rows that saw no key get
    // lse = +inf, so their probabilities are exactly 0.
    const int64_t stats_offset = (batch * p.heads_q + tile.head) * p.seqlen_q + row0;
    const float* lse_rows = args.lse + stats_offset;
    const float* softmax_d_rows = args.softmax_d + stats_offset;
    float lse_log2[kRows];
    float softmax_d[kRows];
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const int row = get<0>(score_coords(r, 0));
      const float lse = row < valid_rows ? lse_rows[row] : kNegInf;
      lse_log2[r] = lse == kNegInf ? INFINITY : lse * kLog2e;
      softmax_d[r] = row < valid_rows ? softmax_d_rows[row] : 0.0f;
    }

    cute::cp_async_wait<0>();
    __syncthreads();  // this tile has landed; every warp is done with the previous one (its stage, P and dS)
    if (kStages == 2 && t + 1 < tiles) {
      load_query_tile(next_tile(tile), stage ^ 1);
      cute::cp_async_fence();
    }

    Tensor acc_s = partition_fragment_C(mma_sdp, Shape<Int<kBlockM>, Int<kBlockN>>{});
    Tensor acc_dp = partition_fragment_C(mma_sdp, Shape<Int<kBlockM>, Int<kBlockN>>{});
    clear(acc_s);
    clear(acc_dp);
    gemm_ss(mma_sdp, acc_s, smem_operand(copy_qdo, thr_copy_qdo, at_stage(tSsQ, q_stage), tSrQ),
            smem_operand(copy_kv, thr_copy_kv, tSsK, tSrK));
    gemm_ss(mma_sdp, acc_dp, smem_operand(copy_qdo, thr_copy_qdo, at_stage(tdPsdO, q_stage), tdPrdO),
            smem_operand(copy_kv, thr_copy_kv, tdPsV, tdPrV));
    if (scales.softcapped) apply_softcap(acc_s, scales.tanh_in);

    // P and dS in place of S and dP; the softcap factor is chosen once per block, not per element.
    Tensor probs = as_rowcol(acc_s);
    Tensor dscores = as_rowcol(acc_dp);
    auto probs_and_dscores = [&](auto softcapped) {
      CUTE_UNROLL
      for (int r = 0; r < kRows; ++r) {
        CUTE_UNROLL
        for (int c = 0; c < size<1>(probs); ++c) {
          const float y = probs(r, c);
          const float prob = exp2f(y * scales.score_scale_log2 - lse_log2[r]);
          const float ds = prob * (dscores(r, c) - softmax_d[r]);
          probs(r, c) = prob;
          dscores(r, c) = decltype(softcapped)::value ? ds * (1.0f - y * y) : ds;
        }
      }
    };
    if (scales.softcapped) {
      probs_and_dscores(cute::true_type{});
    } else {
      probs_and_dscores(cute::false_type{});
    }
    if (!block_fully_visible(p, rows, key_block)) {
      mask_block<kBlockN>(score_coords, p, row0, key_block.begin, [&](int r, int c) {
        probs(r, c) = 0.0f;
        dscores(r, c) = 0.0f;
      });
    }
    Tensor probs16 = convert_fragment<Element>(acc_s);
    Tensor dscores16 = convert_fragment<Element>(acc_dp);
    cute::copy(copy_pds, thr_copy_pds.retile_S(probs16), tPsP);
    cute::copy(copy_pds, thr_copy_pds.retile_S(dscores16), tdSsdS);
    __syncthreads();  // P and dS are in shared memory

    gemm_ss(mma_dkv, acc_dv, smem_operand(copy_pdst, thr_copy_pdst, tdVsPt, tdVrPt),
            smem_operand(copy_qdot, thr_copy_qdot, at_stage(tdVsdOt, q_stage), tdVrdO));

    Tensor acc_dq = partition_fragment_C(mma_dq, Shape<Int<kBlockM>, Int<kHeadDim>>{});
    clear(acc_dq);
    gemm_ss(mma_dq, acc_dq, smem_operand(copy_ds, thr_copy_ds, tdQsdS, tdQrdS),
            smem_operand(copy_kt, thr_copy_kt, tdQsKt, tdQrKt));
    Tensor gdQaccum = make_tensor(make_gmem_ptr(args.dq_accum + q_tile_offset(tile)), q_tile_layout);
    // Deterministic mode: the key blocks before this one add first (each element gets one atomic per CTA).
    int* semaphore = args.dq_semaphore == nullptr
                         ? nullptr
                         : args.dq_semaphore + dq_semaphore_index(p, batch, tile.head, kBlockM, row0 / kBlockM);
    if (semaphore != nullptr) {
      constexpr int kTurnThreads = 32;  // the first warp computes the turn (dq_turn)
      if (tid < kTurnThreads) {
        const int turn = dq_turn(p, kBlockM, kBlockN, row0 / kBlockM, n_block);
        if (tid == 0) dq_wait_turn(semaphore, turn);
      }
      __syncthreads();
    }
    atomic_add_tile<kBlockM, kHeadDim>(thr_dq.partition_C(gdQaccum), acc_dq, dq_coords, valid_rows, head_dim,
                                       int(q_row_stride));
    if (semaphore != nullptr) {
      __threadfence();
      __syncthreads();
      if (tid == 0) dq_pass_turn(semaphore);
    }

    gemm_ss(mma_dkv, acc_dk, smem_operand(copy_pdst, thr_copy_pdst, tdKsdSt, tdKrdSt),
            smem_operand(copy_qdot, thr_copy_qdot, at_stage(tdKsQt, q_stage), tdKrQt));

    if (kStages == 1 && t + 1 < tiles) {
      __syncthreads();  // every warp is done with the only stage
      load_query_tile(next_tile(tile), 0);
      cute::cp_async_fence();
    }
  }

  // Epilogue: dK (times softmax_scale) and dV through K's and V's shared memory.
  CUTE_UNROLL
  for (int i = 0; i < size(acc_dk); ++i) acc_dk(i) *= p.softmax_scale;
  cute::cp_async_wait<0>();
  __syncthreads();  // every warp is done reading K and V
  Tensor gdK = make_tensor(make_gmem_ptr(static_cast<Element*>(args.dk) + kv_offset), kv_tile_layout);
  Tensor gdV = make_tensor(make_gmem_ptr(static_cast<Element*>(args.dv) + kv_offset), kv_tile_layout);
  store_accumulator_tile<Traits, kBlockN>(mma_dkv, acc_dk, gdK, smem_k, typename Traits::SmemLayoutKV{},
                                          keys.end - keys.begin, p.head_dim);
  store_accumulator_tile<Traits, kBlockN>(mma_dkv, acc_dv, gdV, smem_v, typename Traits::SmemLayoutKV{},
                                          keys.end - keys.begin, p.head_dim);
}

}  // namespace jax_flash::sm80
