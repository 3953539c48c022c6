// Definition of launch_flash_fwd (declared in flash_fwd_launch.h): TMA descriptors, softmax constants, scheduler
// parameters and the launch. Included only by the files that instantiate kernel configurations.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include <cute/tensor.hpp>

#include "common/attention_params.h"
#include "sm90/flash_fwd_kernel.h"
#include "sm90/kernel_params.h"
#include "sm90/flash_fwd_launch.h"
#include "sm90/softmax.h"
#include "sm90/tile_scheduler.h"

namespace jax_flash::sm90 {

// L2 bytes the longest-first order budgets for the K/V of the heads it works on at once.
constexpr int64_t kSchedulerL2Bytes = 32ll << 20;

template <class Traits>
cudaError_t launch_flash_fwd(const AttentionParams& p, const void* q, const void* k, const void* v, void* o,
                             float* lse, int* tile_counter, int num_sms, cudaStream_t stream) {
  using Element = typename Traits::Element;
  using Params = FwdParams<Traits>;
  if (p.batch == 0 || p.heads_q == 0 || p.seqlen_q == 0) return cudaSuccess;

  // With no keys every row gets o = 0, lse = -inf and the kernel never reads K or V; q's address stands in for
  // theirs so that the (unused) descriptors stay valid.
  const bool no_keys = p.seqlen_k == 0;
  const int64_t sk = no_keys ? 1 : p.seqlen_k;
  const void* k_or_q = no_keys ? q : k;
  const void* v_or_q = no_keys ? q : v;

  const GmemShape shape_q{int32_t(p.seqlen_q), int32_t(p.head_dim), int32_t(p.heads_q), int32_t(p.batch)};
  const GmemShape shape_k{int32_t(sk), int32_t(p.head_dim), int32_t(p.heads_k), int32_t(p.batch)};
  const GmemShape shape_vt{int32_t(p.head_dim), int32_t(sk), int32_t(p.heads_k), int32_t(p.batch)};
  const GmemStride stride_q{p.q_row_stride(), _1{}, p.head_dim, p.seqlen_q * p.q_row_stride()};
  const GmemStride stride_k{p.kv_row_stride(), _1{}, p.head_dim, sk * p.kv_row_stride()};
  const GmemStrideVt stride_vt{_1{}, p.kv_row_stride(), p.head_dim, sk * p.kv_row_stride()};

  auto gmem_q = make_tensor(make_gmem_ptr(static_cast<const Element*>(q)), shape_q, stride_q);
  auto gmem_k = make_tensor(make_gmem_ptr(static_cast<const Element*>(k_or_q)), shape_k, stride_k);
  auto gmem_vt = make_tensor(make_gmem_ptr(static_cast<const Element*>(v_or_q)), shape_vt, stride_vt);
  auto gmem_o = make_tensor(make_gmem_ptr(static_cast<Element*>(o)), shape_q, stride_q);

  const int num_m_blocks = int((p.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM);
  const int num_head_batches = int(p.batch * p.heads_q);
  const int total_tiles = num_m_blocks * num_head_batches;
  const bool dynamic = tile_counter != nullptr;
  // Longest-first runs over sections of head-batch pairs whose K/V fit the L2 budget (whole GQA groups).
  const int64_t kv_head_bytes = 2 * sk * p.head_dim * int64_t(sizeof(Element));
  const int64_t kv_heads_per_section = std::max<int64_t>(1, kSchedulerL2Bytes / kv_head_bytes);
  const int heads_per_section =
      int(std::min<int64_t>(num_head_batches, kv_heads_per_section * p.group_size()));

  const bool has_softcap = p.softcap > 0.f;
  Params params{
      make_tma_copy(SM90_TMA_LOAD{}, gmem_q, typename Traits::SmemLayoutQ{}, typename Params::TileQ{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, gmem_k, take<0, 2>(typename Traits::SmemLayoutK{}), typename Params::TileK{},
                    _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, gmem_vt, take<0, 2>(typename Traits::SmemLayoutVt{}),
                    typename Params::TileVt{}, _1{}),
      make_tma_copy(SM90_TMA_STORE{}, gmem_o, typename Traits::SmemLayoutO{}, typename Params::TileQ{}, _1{}),
      shape_q,
      shape_k,
      shape_vt,
      p,
      static_cast<Element*>(o),
      lse,
      kLog2e * (has_softcap ? p.softcap : p.softmax_scale),
      has_softcap,
      has_softcap ? p.softmax_scale / p.softcap : 0.f,
      SchedulerParams{num_m_blocks, int(p.heads_q), num_head_batches, total_tiles, heads_per_section,
                      dynamic ? tile_counter : nullptr},
  };

  if (dynamic) {
    const cudaError_t status = cudaMemsetAsync(tile_counter, 0, sizeof(int), stream);
    if (status != cudaSuccess) return status;
  }
  auto kernel = flash_fwd_kernel<Traits>;
  constexpr int kSmemBytes = int(sizeof(typename Traits::SharedStorage));
  cudaError_t status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  if (status != cudaSuccess) return status;
  const int grid = std::min(num_sms, total_tiles);
  kernel<<<grid, Traits::kNumThreads, kSmemBytes, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace jax_flash::sm90
