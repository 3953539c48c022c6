// Definition of launch_flash_bwd (declared in flash_bwd_launch.h): the preprocess, the TMA descriptors and launch
// of the main kernel, the postprocess. Included only by the files that instantiate kernel configurations.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include <cute/tensor.hpp>

#include "common/attention_params.h"
#include "common/backward_postprocess.h"
#include "common/backward_preprocess.h"
#include "sm90/flash_bwd_kernel.h"
#include "sm90/flash_bwd_launch.h"
#include "sm90/flash_bwd_params.h"
#include "sm90/softmax.h"

namespace jax_flash::sm90 {

template <class Traits>
cudaError_t launch_flash_bwd(const AttentionParams& p, const BwdBuffers& b, int num_sms, cudaStream_t stream) {
  using Element = typename Traits::Element;
  using Params = BwdParams<Traits>;
  if (p.batch == 0 || p.heads_q == 0) return cudaSuccess;

  if (cudaError_t err = launch_backward_preprocess<Element>(p, b.dout, b.o, b.dlse, b.softmax_d, b.dq_accum,
                                                             b.dq_semaphore, stream);
      err != cudaSuccess)
    return err;

  const int num_n_blocks = int((p.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN);
  if (num_n_blocks > 0) {
    // With no queries the kernel never reads q, dout or dq_accum (it stores dk = dv = 0); k's and dk's addresses
    // stand in for theirs so that the unused descriptors stay valid.
    const bool no_queries = p.seqlen_q == 0;
    const int64_t sq = no_queries ? 1 : p.seqlen_q;
    const void* q_or_k = no_queries ? b.k : b.q;
    const void* dout_or_k = no_queries ? b.k : b.dout;
    float* dq_accum_or_dk = no_queries ? static_cast<float*>(b.dk) : b.dq_accum;

    const GmemShape shape_q{int32_t(sq), int32_t(p.head_dim), int32_t(p.heads_q), int32_t(p.batch)};
    const GmemShape shape_k{int32_t(p.seqlen_k), int32_t(p.head_dim), int32_t(p.heads_k), int32_t(p.batch)};
    const GmemStride stride_q{p.q_row_stride(), _1{}, p.head_dim, sq * p.q_row_stride()};
    const GmemStride stride_k{p.kv_row_stride(), _1{}, p.head_dim, p.seqlen_k * p.kv_row_stride()};
    auto gmem_q = make_tensor(make_gmem_ptr(static_cast<const Element*>(q_or_k)), shape_q, stride_q);
    auto gmem_do = make_tensor(make_gmem_ptr(static_cast<const Element*>(dout_or_k)), shape_q, stride_q);
    auto gmem_dq = make_tensor(make_gmem_ptr(dq_accum_or_dk), shape_q, stride_q);
    auto gmem_k = make_tensor(make_gmem_ptr(static_cast<const Element*>(b.k)), shape_k, stride_k);
    auto gmem_v = make_tensor(make_gmem_ptr(static_cast<const Element*>(b.v)), shape_k, stride_k);
    auto gmem_dk = make_tensor(make_gmem_ptr(static_cast<Element*>(b.dk)), shape_k, stride_k);
    auto gmem_dv = make_tensor(make_gmem_ptr(static_cast<Element*>(b.dv)), shape_k, stride_k);

    const auto smem_q = take<0, 2>(typename Traits::SmemLayoutQ{});
    const auto smem_k = typename Traits::SmemLayoutK{};
    const bool has_softcap = p.softcap > 0.f;
    const Params params{
        make_tma_copy(SM90_TMA_LOAD{}, gmem_q, smem_q, typename Params::TileQ{}, _1{}),
        make_tma_copy(SM90_TMA_LOAD{}, gmem_do, smem_q, typename Params::TileQ{}, _1{}),
        make_tma_copy(SM90_TMA_LOAD{}, gmem_k, smem_k, typename Params::TileK{}, _1{}),
        make_tma_copy(SM90_TMA_LOAD{}, gmem_v, smem_k, typename Params::TileK{}, _1{}),
        make_tma_copy(SM90_TMA_STORE{}, gmem_dk, smem_k, typename Params::TileK{}, _1{}),
        make_tma_copy(SM90_TMA_STORE{}, gmem_dv, smem_k, typename Params::TileK{}, _1{}),
        make_tma_copy(SM90_TMA_REDUCE_ADD{}, gmem_dq, typename Traits::SmemLayoutdQTma{},
                      typename Traits::TileDqTma{}, _1{}),
        shape_q,
        shape_k,
        p,
        b.lse,
        b.softmax_d,
        b.dq_semaphore,
        kLog2e * (has_softcap ? p.softcap : p.softmax_scale),
        has_softcap,
        has_softcap ? p.softmax_scale / p.softcap : 0.f,
        p.softmax_scale,
        num_n_blocks,
    };
    auto kernel = has_softcap ? flash_bwd_kernel<Traits, true> : flash_bwd_kernel<Traits, false>;
    constexpr int kSmemBytes = int(sizeof(typename Traits::SharedStorage));
    if (cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes))
      return err;
    const int64_t grid = int64_t(num_n_blocks) * p.heads_k * p.batch;
    kernel<<<unsigned(grid), Traits::kNumThreads, kSmemBytes, stream>>>(params);
    if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  }

  return launch_backward_postprocess<Element>(p, b.dq_accum, b.dq, num_sms, stream);
}

}  // namespace jax_flash::sm90
