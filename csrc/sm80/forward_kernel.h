// The forward kernel: one CTA per (block of kBlockM query rows, query head, batch). It locates its tiles, runs the
// mainloop over the key blocks its rows see, and writes o and lse.
#pragma once

#include <cute/tensor.hpp>

#include "common/mask.h"
#include "sm80/epilogue.h"
#include "sm80/forward_mainloop.h"
#include "sm80/kernel_params.h"
#include "sm80/score_transform.h"
#include "sm80/softmax.h"

namespace jax_flash::sm80 {

using namespace cute;

template <typename Traits>
__global__ void __launch_bounds__(Traits::kThreads, 1) forward_kernel(const ForwardArgs args) {
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  extern __shared__ __align__(128) unsigned char smem_bytes[];
  Element* smem = reinterpret_cast<Element*>(smem_bytes);

  const AttentionParams& p = args.params;
  const ScoreScales scales = ScoreScales::from(p);
  // The last query blocks see the most keys under a causal mask: launch them first.
  const int64_t m_block = gridDim.x - 1 - blockIdx.x;
  const int64_t head = blockIdx.y;
  const int64_t batch = blockIdx.z;
  const IndexRange rows{m_block * kBlockM, jf_min((m_block + 1) * kBlockM, p.seqlen_q)};
  const IndexRange keys = visible_keys(p, rows);

  const int64_t q_row_stride = p.q_row_stride();
  const int64_t kv_row_stride = p.kv_row_stride();
  const int64_t q_offset = (batch * p.seqlen_q + rows.begin) * q_row_stride + head * p.head_dim;
  const int64_t kv_offset = batch * p.seqlen_k * kv_row_stride + p.kv_head(head) * p.head_dim;
  const int key_blocks = int((p.seqlen_k + kBlockN - 1) / kBlockN);

  // Offsets inside a tile fit 32 bits (the handler checks heads x head_dim); tile origins are 64-bit.
  auto q_tile_layout = make_layout(Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_stride(int(q_row_stride), _1{}));
  auto kv_tiles_layout = make_layout(make_shape(Int<kBlockN>{}, Int<kHeadDim>{}, key_blocks),
                                     make_stride(int(kv_row_stride), _1{}, kBlockN * kv_row_stride));
  Tensor gQ = make_tensor(make_gmem_ptr(static_cast<const Element*>(args.q) + q_offset), q_tile_layout);
  Tensor gK = make_tensor(make_gmem_ptr(static_cast<const Element*>(args.k) + kv_offset), kv_tiles_layout);
  Tensor gV = make_tensor(make_gmem_ptr(static_cast<const Element*>(args.v) + kv_offset), kv_tiles_layout);
  Tensor gO = make_tensor(make_gmem_ptr(static_cast<Element*>(args.o) + q_offset), q_tile_layout);
  Tensor gLse = make_tensor(make_gmem_ptr(args.lse + (batch * p.heads_q + head) * p.seqlen_q + rows.begin),
                            Shape<Int<kBlockM>>{});

  typename Traits::TiledMma mma;
  Tensor acc_o = partition_fragment_C(mma, Shape<Int<kBlockM>, Int<kHeadDim>>{});
  clear(acc_o);
  OnlineSoftmax<decltype(size<0>(as_rowcol(acc_o)))::value> softmax;

  ForwardMainloop<Traits>::run(p, scales, rows, keys, gQ, gK, gV, smem, acc_o, softmax);
  ForwardEpilogue<Traits>::store(p, scales, rows, acc_o, softmax, gO, gLse, smem);
}

}  // namespace jax_flash::sm80
