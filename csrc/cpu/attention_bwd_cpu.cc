// Backward pass on the CPU, in two phases that never race:
//   1. dq: one task per (batch, query head, block of query rows) streams the key blocks its rows see; it also
//      stores delta = rowsum(dout * o) - dlse for phase 2.
//   2. dk, dv: one task per (batch, kv head, block of keys) streams the query blocks of every query head in the
//      group that see its keys, so the GQA sum over the group happens in its float32 accumulators.
// Both recompute the probabilities from the saved lse (P = exp(score - lse)); nothing of size Sq x Sk is stored.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "common/mask.h"
#include "cpu/attention_cpu.h"
#include "cpu/scores.h"
#include "cpu/tile_gemm.h"
#include "cpu/tile_io.h"

namespace jax_flash::cpu {
namespace {

constexpr int64_t kBlockQ = 64;  // query rows per step (a multiple of kGemmCols: it is a column count in phase 2)
constexpr int64_t kBlockK = 64;  // keys per step (a multiple of kGemmCols)
constexpr float kInf = std::numeric_limits<float>::infinity();

template <typename T>
struct BackwardProblem {
  const AttentionParams& p;
  const T* dout;
  const T* q;
  const T* k;
  const T* v;
  const T* o;
  const float* lse;
  const float* dlse;
  T* dq;
  T* dk;
  T* dv;
  float* delta;  // [B, Hq, Sq], written in phase 1
};

// Per-task float32 scratch for both phases; rows padded to `dp` columns.
struct BackwardTiles {
  int64_t dp;
  std::vector<float> q, dout;            // [kBlockQ, dp]
  std::vector<float> k_t, v_t;           // [dp, kBlockK]
  std::vector<float> k;                  // [kBlockK, dp]
  std::vector<float> probs, score_grad;  // [kBlockQ, kBlockK]: P and dS
  std::vector<float> probs_t, score_grad_t;  // [kBlockK, kBlockQ]
  std::vector<float> acc_a, acc_b;       // dq [kBlockQ, dp] in phase 1; dk, dv [kBlockK, dp] in phase 2
  std::vector<float> lse2, delta;        // [kBlockQ]

  explicit BackwardTiles(int64_t head_dim)
      : dp(padded_cols(head_dim)),
        q(kBlockQ * dp), dout(kBlockQ * dp),
        k_t(dp * kBlockK), v_t(dp * kBlockK),
        k(kBlockK * dp),
        probs(kBlockQ * kBlockK), score_grad(kBlockQ * kBlockK),
        probs_t(kBlockK * kBlockQ), score_grad_t(kBlockK * kBlockQ),
        acc_a(std::max(kBlockQ, kBlockK) * dp), acc_b(kBlockK * dp),
        lse2(kBlockQ), delta(kBlockQ) {}
};

BackwardTiles& thread_tiles(int64_t head_dim) {
  thread_local std::unique_ptr<BackwardTiles> tiles;  // reused across tasks of a call and across calls
  if (!tiles || tiles->dp != padded_cols(head_dim)) tiles = std::make_unique<BackwardTiles>(head_dim);
  return *tiles;
}

// Loads the query-side tiles of (b, h, rows): q, dout, lse in log2 units (+inf for rows that saw no key, so their
// probabilities come out 0) and delta.
template <typename T>
void load_query_side(const BackwardProblem<T>& pb, int64_t b, int64_t h, IndexRange rows, BackwardTiles& t) {
  const AttentionParams& p = pb.p;
  const int64_t n_rows = rows.end - rows.begin;
  load_rows(head_view<const T>(pb.q, p.seqlen_q, p.heads_q, p.head_dim, b, h), rows.begin, n_rows, kBlockQ,
            p.head_dim, t.q.data(), t.dp);
  load_rows(head_view<const T>(pb.dout, p.seqlen_q, p.heads_q, p.head_dim, b, h), rows.begin, n_rows, kBlockQ,
            p.head_dim, t.dout.data(), t.dp);
  const int64_t stat_offset = (b * p.heads_q + h) * p.seqlen_q + rows.begin;
  for (int64_t r = 0; r < n_rows; ++r) {
    const float lse = pb.lse[stat_offset + r];
    t.lse2[r] = lse == -kInf ? kInf : lse * kLog2e;
    t.delta[r] = pb.delta[stat_offset + r];
  }
}

// Loads the key-side tiles of (b, hk, keys): K transposed (for scores), V transposed (for dP) and K (for dq).
template <typename T>
void load_key_side(const BackwardProblem<T>& pb, int64_t b, int64_t hk, IndexRange keys, BackwardTiles& t) {
  const AttentionParams& p = pb.p;
  const int64_t n_keys = keys.end - keys.begin;
  const auto k = head_view<const T>(pb.k, p.seqlen_k, p.heads_k, p.head_dim, b, hk);
  const auto v = head_view<const T>(pb.v, p.seqlen_k, p.heads_k, p.head_dim, b, hk);
  load_rows_transposed(k, keys.begin, n_keys, p.head_dim, t.dp, t.k_t.data(), kBlockK);
  load_rows_transposed(v, keys.begin, n_keys, p.head_dim, t.dp, t.v_t.data(), kBlockK);
  load_rows(k, keys.begin, n_keys, kBlockK, p.head_dim, t.k.data(), t.dp);
}

// For the block (rows x keys): t.probs = P and t.score_grad = dS / softmax_scale, the gradient of the loss with
// respect to the raw dot products q·k up to that common factor. Masked entries are 0 in both.
void probabilities_and_score_grads(const AttentionParams& p, IndexRange rows, IndexRange keys, BackwardTiles& t) {
  const ScoreMap map(p);
  const int64_t n_rows = rows.end - rows.begin;
  std::fill(t.probs.begin(), t.probs.end(), 0.0f);
  std::fill(t.score_grad.begin(), t.score_grad.end(), 0.0f);
  gemm_accumulate(n_rows, kBlockK, t.dp, t.q.data(), t.dp, t.k_t.data(), kBlockK, t.probs.data(), kBlockK);
  gemm_accumulate(n_rows, kBlockK, t.dp, t.dout.data(), t.dp, t.v_t.data(), kBlockK, t.score_grad.data(), kBlockK);

  const bool needs_mask = !block_fully_visible(p, rows, keys) || keys.end - keys.begin < kBlockK;
  for (int64_t r = 0; r < n_rows; ++r) {
    float* x = t.probs.data() + r * kBlockK;        // raw q·k, becomes P
    float* g = t.score_grad.data() + r * kBlockK;   // dP = dout·v, becomes dS
    const float lse2 = t.lse2[r], delta = t.delta[r];
    if (map.softcapped) {
      for (int64_t c = 0; c < kBlockK; ++c) {
        const float th = tanh_vectorizable(x[c] * map.tanh_in);
        const float prob = exp2_nonpositive(th * map.tanh_out - lse2);
        x[c] = prob;
        g[c] = prob * (g[c] - delta) * (1.0f - th * th);
      }
    } else {
      for (int64_t c = 0; c < kBlockK; ++c) {
        const float prob = exp2_nonpositive(x[c] * map.log2_scale - lse2);
        x[c] = prob;
        g[c] = prob * (g[c] - delta);
      }
    }
    if (needs_mask) {
      const IndexRange visible = visible_keys(p, rows.begin + r);
      const int64_t first = std::clamp<int64_t>(visible.begin - keys.begin, 0, kBlockK);
      const int64_t last = std::clamp<int64_t>(std::min(visible.end, keys.end) - keys.begin, first, kBlockK);
      std::fill(x, x + first, 0.0f);
      std::fill(g, g + first, 0.0f);
      std::fill(x + last, x + kBlockK, 0.0f);
      std::fill(g + last, g + kBlockK, 0.0f);
    }
  }
}

// Phase 1: dq for (b, h, rows), and delta for phase 2.
template <typename T>
void dq_task(const BackwardProblem<T>& pb, int64_t b, int64_t h, IndexRange rows, BackwardTiles& t) {
  const AttentionParams& p = pb.p;
  const int64_t D = p.head_dim, dp = t.dp, n_rows = rows.end - rows.begin;
  const int64_t stat_offset = (b * p.heads_q + h) * p.seqlen_q + rows.begin;
  const auto dout = head_view<const T>(pb.dout, p.seqlen_q, p.heads_q, D, b, h);
  const auto o = head_view<const T>(pb.o, p.seqlen_q, p.heads_q, D, b, h);
  for (int64_t r = 0; r < n_rows; ++r) {
    const T* dout_row = dout.row(rows.begin + r);
    const T* o_row = o.row(rows.begin + r);
    float dot = 0.0f;
    for (int64_t d = 0; d < D; ++d) dot += to_float(dout_row[d]) * to_float(o_row[d]);
    pb.delta[stat_offset + r] = dot - pb.dlse[stat_offset + r];
  }
  load_query_side(pb, b, h, rows, t);

  float* dq_acc = t.acc_a.data();
  std::fill(dq_acc, dq_acc + kBlockQ * dp, 0.0f);
  const IndexRange keys = visible_keys(p, rows);
  for (int64_t k0 = keys.begin; k0 < keys.end; k0 += kBlockK) {
    const IndexRange block{k0, std::min(k0 + kBlockK, keys.end)};
    load_key_side(pb, b, p.kv_head(h), block, t);
    probabilities_and_score_grads(p, rows, block, t);
    gemm_accumulate(n_rows, dp, kBlockK, t.score_grad.data(), kBlockK, t.k.data(), dp, dq_acc, dp);
  }
  store_rows(dq_acc, dp, n_rows, D, p.softmax_scale, head_view<T>(pb.dq, p.seqlen_q, p.heads_q, D, b, h),
             rows.begin);
}

// Phase 2: dk and dv for (b, hk, keys), summed over the query heads of the group.
template <typename T>
void dkdv_task(const BackwardProblem<T>& pb, int64_t b, int64_t hk, IndexRange keys, BackwardTiles& t) {
  const AttentionParams& p = pb.p;
  const int64_t D = p.head_dim, dp = t.dp, n_keys = keys.end - keys.begin;
  float* dk_acc = t.acc_a.data();
  float* dv_acc = t.acc_b.data();
  std::fill(dk_acc, dk_acc + kBlockK * dp, 0.0f);
  std::fill(dv_acc, dv_acc + kBlockK * dp, 0.0f);
  load_key_side(pb, b, hk, keys, t);

  const IndexRange queries = visible_queries(p, keys);
  for (int64_t h = hk * p.group_size(); h < (hk + 1) * p.group_size(); ++h) {
    for (int64_t r0 = queries.begin; r0 < queries.end; r0 += kBlockQ) {
      const IndexRange rows{r0, std::min(r0 + kBlockQ, queries.end)};
      const int64_t n_rows = rows.end - rows.begin;
      load_query_side(pb, b, h, rows, t);
      probabilities_and_score_grads(p, rows, keys, t);
      transpose_tile(t.probs.data(), kBlockK, n_rows, n_keys, t.probs_t.data(), kBlockQ);
      transpose_tile(t.score_grad.data(), kBlockK, n_rows, n_keys, t.score_grad_t.data(), kBlockQ);
      gemm_accumulate(n_keys, dp, n_rows, t.probs_t.data(), kBlockQ, t.dout.data(), dp, dv_acc, dp);
      gemm_accumulate(n_keys, dp, n_rows, t.score_grad_t.data(), kBlockQ, t.q.data(), dp, dk_acc, dp);
    }
  }
  store_rows(dk_acc, dp, n_keys, D, p.softmax_scale, head_view<T>(pb.dk, p.seqlen_k, p.heads_k, D, b, hk),
             keys.begin);
  store_rows(dv_acc, dp, n_keys, D, 1.0f, head_view<T>(pb.dv, p.seqlen_k, p.heads_k, D, b, hk), keys.begin);
}

template <typename T>
void backward(const BackwardProblem<T>& pb, const ParallelFor& parallel_for) {
  const AttentionParams& p = pb.p;
  const int64_t q_blocks = (p.seqlen_q + kBlockQ - 1) / kBlockQ;
  parallel_for(p.batch * p.heads_q * q_blocks, [&](int64_t task) {
    const int64_t block = task % q_blocks, bh = task / q_blocks;
    const IndexRange rows{block * kBlockQ, std::min((block + 1) * kBlockQ, p.seqlen_q)};
    dq_task(pb, bh / p.heads_q, bh % p.heads_q, rows, thread_tiles(p.head_dim));
  });
  const int64_t k_blocks = (p.seqlen_k + kBlockK - 1) / kBlockK;
  parallel_for(p.batch * p.heads_k * k_blocks, [&](int64_t task) {
    const int64_t block = task % k_blocks, bh = task / k_blocks;
    const IndexRange keys{block * kBlockK, std::min((block + 1) * kBlockK, p.seqlen_k)};
    dkdv_task(pb, bh / p.heads_k, bh % p.heads_k, keys, thread_tiles(p.head_dim));
  });
}

}  // namespace

void attention_backward(ElementType type, const AttentionParams& params, const void* dout, const void* q,
                        const void* k, const void* v, const void* o, const float* lse, const float* dlse, void* dq,
                        void* dk, void* dv, float* delta, const ParallelFor& parallel_for) {
  auto run = [&](auto tag) {
    using T = decltype(tag);
    backward(BackwardProblem<T>{params, static_cast<const T*>(dout), static_cast<const T*>(q),
                                static_cast<const T*>(k), static_cast<const T*>(v), static_cast<const T*>(o), lse,
                                dlse, static_cast<T*>(dq), static_cast<T*>(dk), static_cast<T*>(dv), delta},
             parallel_for);
  };
  dispatch_element_type(type, run);
}

}  // namespace jax_flash::cpu
