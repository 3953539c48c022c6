// What one launch of the backward main kernel receives (as a __grid_constant__ parameter): the TMA descriptors of
// q, dout, k, v (loads), dk, dv (stores) and the float32 dq accumulator (reduce-add), the problem, the row
// statistics and the score constants.
#pragma once

#include <cstdint>

#include <cute/tensor.hpp>

#include "common/attention_params.h"
#include "sm90/kernel_params.h"

namespace jax_flash::sm90 {

using namespace cute;

template <class Traits>
struct BwdParams {
  using Element = typename Traits::Element;
  using TileQ = Shape<Int<Traits::kBlockM>, Int<Traits::kHeadDim>>;
  using TileK = Shape<Int<Traits::kBlockN>, Int<Traits::kHeadDim>>;

  template <class T>
  using GmemTensor = decltype(make_tensor(make_gmem_ptr(static_cast<T*>(nullptr)), GmemShape{}, GmemStride{}));

  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor<const Element>{},
                                      take<0, 2>(typename Traits::SmemLayoutQ{}), TileQ{}, _1{}));
  using TmaK = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor<const Element>{}, typename Traits::SmemLayoutK{},
                                      TileK{}, _1{}));
  using TmadK = decltype(make_tma_copy(SM90_TMA_STORE{}, GmemTensor<Element>{}, typename Traits::SmemLayoutK{},
                                       TileK{}, _1{}));
  using TmadQ = decltype(make_tma_copy(SM90_TMA_REDUCE_ADD{}, GmemTensor<float>{},
                                       typename Traits::SmemLayoutdQTma{}, typename Traits::TileDqTma{}, _1{}));

  TmaQ tma_q;
  TmaQ tma_do;
  TmaK tma_k;
  TmaK tma_v;
  TmadK tma_dk;
  TmadK tma_dv;
  TmadQ tma_dq;
  GmemShape shape_q;  // (Sq, D, Hq, B): q, dout, dq_accum
  GmemShape shape_k;  // (Sk, D, Hk, B): k, v, dk, dv

  AttentionParams attn;
  const float* lse;        // [B, Hq, Sq], natural log
  const float* softmax_d;  // [B, Hq, Sq], rowsum(dout o) - dlse (from the preprocess)
  int* dq_semaphore;       // [B, Hq, Sq] zeroed counters (deterministic dQ order), or null
  // P = exp2(score * scale_log2 - lse * log2(e)), with score = s (or tanh(s * softcap_prescale) with a softcap).
  float scale_log2;
  bool has_softcap;
  float softcap_prescale;
  // dK = softmax_scale * sum dS^T Q (dQ gets the factor in the postprocess).
  float softmax_scale;
  int num_n_blocks;
};

}  // namespace jax_flash::sm90
