// Forward pass on the CPU: one task per (batch, query head, block of kBlockQ query rows). Each task streams the key
// blocks its rows can see, keeping a running max and sum per row (online softmax) and rescaling its float32 output
// accumulator as the max grows; the Sq x Sk score matrix never exists.
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

constexpr int64_t kBlockQ = 64;  // query rows per task
constexpr int64_t kBlockK = 64;  // keys per inner step (a multiple of kGemmCols)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

template <typename T>
struct ForwardProblem {
  const AttentionParams& p;
  const T* q;
  const T* k;
  const T* v;
  T* o;
  float* lse;
};

// Per-task float32 scratch; rows padded to `dp` columns.
struct ForwardTiles {
  int64_t dp;
  std::vector<float> q;       // [kBlockQ, dp]
  std::vector<float> k_t;     // [dp, kBlockK]   (K transposed: scores = q · k_t)
  std::vector<float> v;       // [kBlockK, dp]
  std::vector<float> scores;  // [kBlockQ, kBlockK]
  std::vector<float> acc;     // [kBlockQ, dp]   unnormalised output
  std::vector<float> row_max; // [kBlockQ]       running max of log2-domain scores
  std::vector<float> row_sum; // [kBlockQ]       running sum of exp2(score - max)

  explicit ForwardTiles(int64_t head_dim)
      : dp(padded_cols(head_dim)),
        q(kBlockQ * dp),
        k_t(dp * kBlockK),
        v(kBlockK * dp),
        scores(kBlockQ * kBlockK),
        acc(kBlockQ * dp),
        row_max(kBlockQ),
        row_sum(kBlockQ) {}
};

// Turns raw dot products into log2-domain scores with the mask applied (-inf where a row does not see a key).
void map_and_mask_scores(const AttentionParams& p, const ScoreMap& map, IndexRange rows, IndexRange keys,
                         float* scores) {
  const bool needs_mask = !block_fully_visible(p, rows, keys) || keys.end - keys.begin < kBlockK;
  for (int64_t r = 0; r < rows.end - rows.begin; ++r) {
    float* s = scores + r * kBlockK;
    if (map.softcapped) {
      for (int64_t c = 0; c < kBlockK; ++c) s[c] = tanh_vectorizable(s[c] * map.tanh_in) * map.tanh_out;
    } else {
      for (int64_t c = 0; c < kBlockK; ++c) s[c] *= map.log2_scale;
    }
    if (needs_mask) {
      const IndexRange visible = visible_keys(p, rows.begin + r);
      const int64_t first = std::clamp<int64_t>(visible.begin - keys.begin, 0, kBlockK);
      const int64_t last = std::clamp<int64_t>(std::min(visible.end, keys.end) - keys.begin, first, kBlockK);
      for (int64_t c = 0; c < first; ++c) s[c] = kNegInf;
      for (int64_t c = last; c < kBlockK; ++c) s[c] = kNegInf;
    }
  }
}

// One online-softmax step: exponentiate this block's scores in place (they become P) and rescale the running sum
// and the output accumulator for the new row max.
void online_softmax_step(int64_t rows, int64_t dp, ForwardTiles& t) {
  for (int64_t r = 0; r < rows; ++r) {
    float* s = t.scores.data() + r * kBlockK;
    float block_max = kNegInf;
    for (int64_t c = 0; c < kBlockK; ++c) block_max = std::max(block_max, s[c]);
    const float new_max = std::max(t.row_max[r], block_max);
    // A row that has seen no key yet keeps max -inf; exponentiate against 0 so masked scores give 0, not NaN.
    const float reference = new_max == kNegInf ? 0.0f : new_max;
    const float correction = exp2_nonpositive(t.row_max[r] - reference);
    float block_sum = 0.0f;
    for (int64_t c = 0; c < kBlockK; ++c) {
      s[c] = exp2_nonpositive(s[c] - reference);
      block_sum += s[c];
    }
    t.row_sum[r] = t.row_sum[r] * correction + block_sum;
    t.row_max[r] = new_max;
    float* acc = t.acc.data() + r * dp;
    for (int64_t d = 0; d < dp; ++d) acc[d] *= correction;
  }
}

template <typename T>
void forward_task(const ForwardProblem<T>& pb, int64_t b, int64_t h, IndexRange rows, ForwardTiles& t) {
  const AttentionParams& p = pb.p;
  const int64_t D = p.head_dim, dp = t.dp, n_rows = rows.end - rows.begin;
  const int64_t hk = p.kv_head(h);
  const ScoreMap map(p);
  const auto q = head_view<const T>(pb.q, p.seqlen_q, p.heads_q, D, b, h);
  const auto k = head_view<const T>(pb.k, p.seqlen_k, p.heads_k, D, b, hk);
  const auto v = head_view<const T>(pb.v, p.seqlen_k, p.heads_k, D, b, hk);

  load_rows(q, rows.begin, n_rows, kBlockQ, D, t.q.data(), dp);
  std::fill(t.acc.begin(), t.acc.end(), 0.0f);
  std::fill(t.row_max.begin(), t.row_max.end(), kNegInf);
  std::fill(t.row_sum.begin(), t.row_sum.end(), 0.0f);

  const IndexRange keys = visible_keys(p, rows);
  for (int64_t k0 = keys.begin; k0 < keys.end; k0 += kBlockK) {
    const IndexRange block{k0, std::min(k0 + kBlockK, keys.end)};
    const int64_t n_keys = block.end - block.begin;
    load_rows_transposed(k, block.begin, n_keys, D, dp, t.k_t.data(), kBlockK);
    load_rows(v, block.begin, n_keys, kBlockK, D, t.v.data(), dp);

    std::fill(t.scores.begin(), t.scores.end(), 0.0f);
    gemm_accumulate(n_rows, kBlockK, dp, t.q.data(), dp, t.k_t.data(), kBlockK, t.scores.data(), kBlockK);
    map_and_mask_scores(p, map, rows, block, t.scores.data());
    online_softmax_step(n_rows, dp, t);
    gemm_accumulate(n_rows, dp, kBlockK, t.scores.data(), kBlockK, t.v.data(), dp, t.acc.data(), dp);
  }

  // Normalise once at the end; rows that saw no key get o = 0 and lse = -inf.
  float* lse = pb.lse + (b * p.heads_q + h) * p.seqlen_q + rows.begin;
  for (int64_t r = 0; r < n_rows; ++r) {
    const bool empty = t.row_sum[r] == 0.0f;
    const float inv_sum = empty ? 0.0f : 1.0f / t.row_sum[r];
    float* acc = t.acc.data() + r * dp;
    for (int64_t d = 0; d < dp; ++d) acc[d] *= inv_sum;
    lse[r] = empty ? kNegInf : (t.row_max[r] + std::log2(t.row_sum[r])) * kLn2;
  }
  store_rows(t.acc.data(), dp, n_rows, D, 1.0f, head_view<T>(pb.o, p.seqlen_q, p.heads_q, D, b, h), rows.begin);
}

template <typename T>
void forward(const ForwardProblem<T>& pb, const ParallelFor& parallel_for) {
  const AttentionParams& p = pb.p;
  const int64_t q_blocks = (p.seqlen_q + kBlockQ - 1) / kBlockQ;
  parallel_for(p.batch * p.heads_q * q_blocks, [&](int64_t task) {
    thread_local std::unique_ptr<ForwardTiles> tiles;  // reused across tasks of a call and across calls
    if (!tiles || tiles->dp != padded_cols(p.head_dim)) tiles = std::make_unique<ForwardTiles>(p.head_dim);
    const int64_t block = task % q_blocks, bh = task / q_blocks;
    const IndexRange rows{block * kBlockQ, std::min((block + 1) * kBlockQ, p.seqlen_q)};
    forward_task(pb, bh / p.heads_q, bh % p.heads_q, rows, *tiles);
  });
}

}  // namespace

void attention_forward(ElementType type, const AttentionParams& params, const void* q, const void* k, const void* v,
                       void* o, float* lse, const ParallelFor& parallel_for) {
  auto run = [&](auto tag) {
    using T = decltype(tag);
    forward(ForwardProblem<T>{params, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
                              static_cast<T*>(o), lse},
            parallel_for);
  };
  dispatch_element_type(type, run);
}

}  // namespace jax_flash::cpu
