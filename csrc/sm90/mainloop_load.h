// Producer: one warp loads a tile's Q once and its K and V blocks, last key block first, into the shared-memory
// pipelines with TMA (out-of-range rows and head-dim columns arrive as zeros).
//
// Order per tile: K(last); Q once the consumers released the previous Q; then, once the previous tile's O has
// left shared memory (it reuses V's bytes), V. With the intra-warpgroup overlap the consumers need K(j - 1)
// before V(j), so V trails K by one block; otherwise K(j) and V(j) go together.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "common/mask.h"
#include "sm90/kernel_traits.h"
#include "sm90/named_barriers.h"
#include "sm90/score_mask.h"
#include "sm90/tile_scheduler.h"

namespace jax_flash::sm90 {

using namespace cute;

template <class Traits>
struct MainloopLoad {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using State = typename Pipeline::State;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;

  // Loads one tile; returns the scheduler's prefetched next tile (claimed while V is still loading).
  // `st` and `work_idx` (tiles loaded so far, the parity of the Q and O barriers) advance only for tiles with
  // visible keys, as on the consumer side.
  template <class Params, class Scheduler>
  __device__ __forceinline__ int load_tile(const Params& params, SharedStorage& smem, const Pipeline& pipe_k,
                                           const Pipeline& pipe_v, State& st, int& work_idx, int tile,
                                           const TileCoord& coord, const Scheduler& scheduler) const {
    const ScoreMask<kBlockM, kBlockN> mask(params.attn, coord.m_block);
    const IndexRange blocks = mask.key_blocks();
    if (blocks.empty()) return scheduler.producer_prefetch(tile);

    const int kv_head = coord.head / int(params.attn.group_size());
    Tensor sQ = make_tensor(make_smem_ptr(smem.tensors.mainloop.q.data()), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(smem.tensors.mainloop.k.data()), typename Traits::SmemLayoutK{});
    Tensor sVt = make_tensor(make_smem_ptr(smem.tensors.mainloop.v.data()), typename Traits::SmemLayoutVt{});

    Tensor mQ = params.tma_q.get_tma_tensor(params.shape_q)(_, _, coord.head, coord.batch);      // (Sq, D)
    Tensor mK = params.tma_k.get_tma_tensor(params.shape_k)(_, _, kv_head, coord.batch);         // (Sk, D)
    Tensor mVt = params.tma_v.get_tma_tensor(params.shape_vt)(_, _, kv_head, coord.batch);       // (D, Sk)
    Tensor gQ = local_tile(mQ, typename Params::TileQ{}, make_coord(coord.m_block, _0{}));       // (M, D)
    Tensor gK = local_tile(mK, typename Params::TileK{}, make_coord(_, _0{}));                   // (N, D, n)
    Tensor gVt = local_tile(mVt, typename Params::TileVt{}, make_coord(_0{}, _));                // (D, N, n)

    auto cta_tma_q = params.tma_q.get_slice(_0{});
    auto cta_tma_k = params.tma_k.get_slice(_0{});
    auto cta_tma_v = params.tma_v.get_slice(_0{});
    Tensor tQgQ = group_modes<0, 3>(cta_tma_q.partition_S(gQ));    // (TMA)
    Tensor tQsQ = group_modes<0, 3>(cta_tma_q.partition_D(sQ));    // (TMA)
    Tensor tKgK = group_modes<0, 3>(cta_tma_k.partition_S(gK));    // (TMA, n)
    Tensor tKsK = group_modes<0, 3>(cta_tma_k.partition_D(sK));    // (TMA, stage)
    Tensor tVgV = group_modes<0, 3>(cta_tma_v.partition_S(gVt));   // (TMA, n)
    Tensor tVsV = group_modes<0, 3>(cta_tma_v.partition_D(sVt));   // (TMA, stage)

    // K and V are re-read by every query tile of the head: keep them in L2; Q is read once.
    constexpr auto kKeep = TMA::CacheHintSm90::EVICT_LAST;
    constexpr auto kStream = TMA::CacheHintSm90::EVICT_FIRST;
    const bool leader = cute::elect_one_sync();
    auto load_k = [&](int n_block, const State& s) {
      pipe_k.producer_wait(s);
      if (leader) {
        copy(params.tma_k.with(pipe_k.producer_arm(s, Traits::kTmaBytesK), 0, kKeep), tKgK(_, n_block),
             tKsK(_, s.index));
      }
    };
    auto load_v = [&](int n_block, const State& s) {
      pipe_v.producer_wait(s);
      if (leader) {
        copy(params.tma_v.with(pipe_v.producer_arm(s, Traits::kTmaBytesV), 0, kKeep), tVgV(_, n_block),
             tVsV(_, s.index));
      }
    };

    int n_block = int(blocks.end) - 1;
    load_k(n_block, st);

    __syncwarp();
    named_barrier_sync(Traits::kNumMmaThreads + Traits::kNumProducerThreads, barrier_id(NamedBarrier::kQueryEmpty));
    if (leader) {
      cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&smem.q_full, Traits::kTmaBytesQ);
      copy(params.tma_q.with(smem.q_full, 0, kStream), tQgQ, tQsQ);
    }

    cutlass::arch::ClusterBarrier::wait(&smem.o_read, (work_idx + 1) & 1);
    if constexpr (!Traits::kIntraWarpgroupOverlap) load_v(n_block, st);
    for (--n_block; n_block >= int(blocks.begin); --n_block) {
      const State st_v = st;
      st.advance();
      load_k(n_block, st);
      if constexpr (Traits::kIntraWarpgroupOverlap) {
        load_v(n_block + 1, st_v);
      } else {
        load_v(n_block, st);
      }
    }
    const int next = scheduler.producer_prefetch(tile);
    if constexpr (Traits::kIntraWarpgroupOverlap) load_v(int(blocks.begin), st);
    st.advance();
    ++work_idx;
    __syncwarp();
    return next;
  }
};

}  // namespace jax_flash::sm90
