// What one launch of the forward kernel receives (as a __grid_constant__ parameter): the TMA descriptors of
// q, k, v and o, the problem, the softmax constants and the scheduler's parameters.
#pragma once

#include <cstdint>

#include <cute/tensor.hpp>

#include "common/attention_params.h"
#include "sm90/tile_scheduler.h"

namespace jax_flash::sm90 {

using namespace cute;

// Global tensors are viewed as (seq, head_dim, heads, batch) with head_dim contiguous; V also as
// (head_dim, seq, heads, batch), the operand order of O = P V.
using GmemShape = Shape<int32_t, int32_t, int32_t, int32_t>;
using GmemStride = Stride<int64_t, _1, int64_t, int64_t>;
using GmemStrideVt = Stride<_1, int64_t, int64_t, int64_t>;

template <class Traits>
struct FwdParams {
  using Element = typename Traits::Element;
  using TileQ = Shape<Int<Traits::kBlockM>, Int<Traits::kHeadDim>>;
  using TileK = Shape<Int<Traits::kBlockN>, Int<Traits::kHeadDim>>;
  using TileVt = Shape<Int<Traits::kHeadDim>, Int<Traits::kBlockN>>;

  template <class T, class Stride>
  using GmemTensor = decltype(make_tensor(make_gmem_ptr(static_cast<T*>(nullptr)), GmemShape{}, Stride{}));

  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor<const Element, GmemStride>{},
                                      typename Traits::SmemLayoutQ{}, TileQ{}, _1{}));
  using TmaK = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor<const Element, GmemStride>{},
                                      take<0, 2>(typename Traits::SmemLayoutK{}), TileK{}, _1{}));
  using TmaV = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor<const Element, GmemStrideVt>{},
                                      take<0, 2>(typename Traits::SmemLayoutVt{}), TileVt{}, _1{}));
  using TmaO = decltype(make_tma_copy(SM90_TMA_STORE{}, GmemTensor<Element, GmemStride>{},
                                      typename Traits::SmemLayoutO{}, TileQ{}, _1{}));

  TmaQ tma_q;
  TmaK tma_k;
  TmaV tma_v;
  TmaO tma_o;
  GmemShape shape_q;   // (Sq, D, Hq, B), also o's
  GmemShape shape_k;   // (Sk, D, Hk, B)
  GmemShape shape_vt;  // (D, Sk, Hk, B)

  AttentionParams attn;
  Element* o;  // [B, Sq, Hq, D], written directly for tiles whose rows see no key
  float* lse;  // [B, Hq, Sq]
  // Exponent scale of the softmax, log2(e) * softmax_scale (log2(e) * softcap with a softcap).
  float scale_log2;
  // With a softcap, scores become tanh(s * softcap_prescale) with softcap_prescale = softmax_scale / softcap.
  bool has_softcap;
  float softcap_prescale;
  SchedulerParams scheduler;
};

}  // namespace jax_flash::sm90
