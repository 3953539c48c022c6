// Backward producer warp: TMA of the CTA's K and V once, then per (query head, query block) one Q stage holding
// that block of Q and dO (TMA; rows past Sq and head-dim columns past D arrive as zeros) and the block's lse and
// softmax_d rows (ordinary loads by the warp's lanes, which then arrive on the stage's full barrier too).
#pragma once

#include <cmath>

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "sm90/flash_bwd_kernel_traits.h"
#include "sm90/flash_bwd_work.h"
#include "sm90/mbarrier.h"
#include "sm90/softmax.h"

namespace jax_flash::sm90 {

using namespace cute;

template <class Traits>
struct BwdLoad {
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using State = typename Pipeline::State;
  static constexpr int kBlockM = Traits::kBlockM;

  template <class Params, class Work>
  __device__ __forceinline__ void run(const Params& params, SharedStorage& smem, const Pipeline& pipe,
                                      const Work& work) const {
    const AttentionParams& p = params.attn;
    const bool leader = cute::elect_one_sync();
    const int lane = threadIdx.x % kWarpSize;

    // Only this CTA reads its K and V; every key block's CTA of the head re-reads Q and dO: keep those in L2.
    constexpr auto kKeep = TMA::CacheHintSm90::EVICT_LAST;
    constexpr auto kStream = TMA::CacheHintSm90::EVICT_FIRST;
    if (leader) {
      Tensor sK = make_tensor(make_smem_ptr(smem.k.data()), typename Traits::SmemLayoutK{});
      Tensor sV = make_tensor(make_smem_ptr(smem.v.data()), typename Traits::SmemLayoutK{});
      Tensor mK = params.tma_k.get_tma_tensor(params.shape_k)(_, _, work.kv_head, work.batch);
      Tensor mV = params.tma_v.get_tma_tensor(params.shape_k)(_, _, work.kv_head, work.batch);
      Tensor gK = local_tile(mK, typename Params::TileK{}, make_coord(work.n_block, _0{}));
      Tensor gV = local_tile(mV, typename Params::TileK{}, make_coord(work.n_block, _0{}));
      auto cta_tma_k = params.tma_k.get_slice(_0{});
      auto cta_tma_v = params.tma_v.get_slice(_0{});
      cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&smem.kv_full, 2 * Traits::kTmaBytesK);
      copy(params.tma_k.with(smem.kv_full, 0, kStream), cta_tma_k.partition_S(gK), cta_tma_k.partition_D(sK));
      copy(params.tma_v.with(smem.kv_full, 0, kStream), cta_tma_v.partition_S(gV), cta_tma_v.partition_D(sV));
    }

    Tensor sQ = make_tensor(make_smem_ptr(smem.q.data()), typename Traits::SmemLayoutQ{});
    Tensor sdO = make_tensor(make_smem_ptr(Traits::dout_smem(smem)), typename Traits::SmemLayoutQ{});
    auto cta_tma_q = params.tma_q.get_slice(_0{});
    auto cta_tma_do = params.tma_do.get_slice(_0{});
    Tensor tQsQ = group_modes<0, 3>(cta_tma_q.partition_D(sQ));     // (TMA, stage)
    Tensor tdOsdO = group_modes<0, 3>(cta_tma_do.partition_D(sdO));  // (TMA, stage)

    State st;
    for (int i = 0; i < work.iterations; ++i) {
      const int head = work.head(i);
      const int m_block = work.m_block(i);
      pipe.producer_wait(st);
      if (leader) {
        Tensor mQ = params.tma_q.get_tma_tensor(params.shape_q)(_, _, head, work.batch);
        Tensor mdO = params.tma_do.get_tma_tensor(params.shape_q)(_, _, head, work.batch);
        Tensor gQ = local_tile(mQ, typename Params::TileQ{}, make_coord(m_block, _0{}));
        Tensor gdO = local_tile(mdO, typename Params::TileQ{}, make_coord(m_block, _0{}));
        uint64_t& full = pipe.producer_arm(st, Traits::kTmaBytesQdO);
        copy(params.tma_q.with(full, 0, kKeep), group_modes<0, 3>(cta_tma_q.partition_S(gQ)), tQsQ(_, st.index));
        copy(params.tma_do.with(full, 0, kKeep), group_modes<0, 3>(cta_tma_do.partition_S(gdO)),
             tdOsdO(_, st.index));
      }
      // lse in base 2; +inf for rows past Sq and rows that see no key (lse = -inf), so that their P is 0.
      const int64_t stats = (int64_t(work.batch) * p.heads_q + head) * p.seqlen_q;
      for (int r = lane; r < kBlockM; r += kWarpSize) {
        const int64_t row = int64_t(m_block) * kBlockM + r;
        const bool in_range = row < p.seqlen_q;
        const float lse = in_range ? params.lse[stats + row] : INFINITY;
        smem.lse_log2[st.index][r] = lse == -INFINITY ? INFINITY : lse * kLog2e;
        smem.softmax_d[st.index][r] = in_range ? params.softmax_d[stats + row] : 0.f;
      }
      mbarrier_arrive(&pipe.storage->full[st.index]);  // releases this lane's stores
      st.advance();
    }
  }
};

}  // namespace jax_flash::sm90
