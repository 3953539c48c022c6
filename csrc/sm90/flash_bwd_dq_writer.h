// The dQ warp of the backward kernel: per (query head, query block) it takes the float32 dQ tile the consumer
// warpgroups left in shared memory and adds it into the float32 dq accumulator in global memory with one TMA
// reduce-add (which clips rows past Sq and head-dim columns past D). By default the additions of different key
// blocks' CTAs land in an unspecified order, so the float32 sums are not bitwise reproducible run to run; with a
// semaphore workspace each CTA waits for its turn (ascending key block, common/dq_order.h) and lets the next one go
// only once its addition has completed. When the tile lies in the bytes of the step's Q/dO stage
// (Traits::kDqInQdOStage), the dQ warp's arrival on the stage's empty barrier, once its TMA has read the tile, joins
// the consumer threads' (they release the lse and softmax_d they read).
#pragma once

#include <cute/tensor.hpp>

#include "common/dq_order.h"
#include "sm90/flash_bwd_kernel_traits.h"
#include "sm90/flash_bwd_named_barriers.h"
#include "sm90/flash_bwd_work.h"

namespace jax_flash::sm90 {

using namespace cute;

template <class Traits>
struct BwdDqWriter {
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using State = typename Pipeline::State;
  static constexpr uint32_t kHandoffThreads = Traits::kNumMmaThreads + kWarpSize;

  template <class Params, class Work>
  __device__ __forceinline__ void run(const Params& params, SharedStorage& smem, const Pipeline& pipe,
                                      const Work& work) const {
    auto cta_tma_dq = params.tma_dq.get_slice(_0{});
    const bool leader = threadIdx.x % kWarpSize == 0;
    // The tile's buffer starts free (a CTA with nothing to add leaves the barrier alone).
    if (work.iterations > 0) named_barrier_arrive(kHandoffThreads, barrier_id(BwdNamedBarrier::kDqEmpty));
    State st;
    for (int i = 0; i < work.iterations; ++i) {
      const int head = work.head(i);
      const int m_block = work.m_block(i);
      int* semaphore = params.dq_semaphore == nullptr
                           ? nullptr
                           : params.dq_semaphore + dq_semaphore_index(params.attn, work.batch, head,
                                                                      Traits::kBlockM, m_block);
      const int turn = semaphore == nullptr
                           ? 0
                           : dq_turn(params.attn, Traits::kBlockM, Traits::kBlockN, m_block, work.n_block);
      named_barrier_sync(kHandoffThreads, barrier_id(BwdNamedBarrier::kDqFull));
      if (leader) {
        if (semaphore != nullptr) {
          dq_wait_turn(semaphore, turn);
          asm volatile("fence.proxy.async.global;" ::: "memory");  // the reduce-add (async proxy) comes after
        }
        Tensor mdQ = params.tma_dq.get_tma_tensor(params.shape_q)(_, _, head, work.batch);
        Tensor gdQ = local_tile(mdQ, typename Traits::TileDqTma{}, make_coord(m_block, _0{}));
        Tensor sdQ = make_tensor(make_smem_ptr(Traits::dq_smem(smem, st.index)), typename Traits::SmemLayoutdQTma{});
        copy(params.tma_dq, cta_tma_dq.partition_S(sdQ), cta_tma_dq.partition_D(gdQ));
        tma_store_arrive();
        if (semaphore != nullptr) {
          asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");  // the addition has completed
          asm volatile("fence.proxy.async.global;" ::: "memory");
          dq_pass_turn(semaphore);
        } else {
          tma_store_wait<0>();  // the reduce-add has read the tile out of shared memory
        }
      }
      __syncwarp();
      if constexpr (Traits::kDqInQdOStage) pipe.consumer_release(st);
      st.advance();
      if (i + 1 < work.iterations) named_barrier_arrive(kHandoffThreads, barrier_id(BwdNamedBarrier::kDqEmpty));
    }
    // The global additions complete before the kernel does.
    if (leader) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
  }
};

}  // namespace jax_flash::sm90
