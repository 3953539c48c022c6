// Standalone check and benchmark of the Hopper forward (csrc/sm90), independent of JAX.
//
//   flash_fwd_sm90_test check   correctness sweep against a float64 CPU reference (outputs poisoned with NaN first)
//   flash_fwd_sm90_test bench   TFLOP/s on the FlashAttention-3 paper grid (bf16) and the ablation shape
//   flash_fwd_sm90_test ablation   the ablation shape alone (with/without ping-pong and intra-warpgroup overlap)
//   flash_fwd_sm90_test quick   a few small cases (for compute-sanitizer)
//   flash_fwd_sm90_test time D SEQLEN CAUSAL REPS   one grid shape, REPS timed runs (for profilers)
// Exit status 0 only if every check passed.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "flash_fwd_sm90_ablation.h"
#include "harness.h"

using jax_flash::AttentionParams;
using jax_flash::IndexRange;
using jax_flash::kUnbounded;
using jax_flash::sm90::DType;
using namespace jax_flash::harness;

namespace {

// Relative L2 error bounds of o by dtype (bf16 has 8 mantissa bits, fp16 11), and absolute bound on lse.
constexpr double kMaxRelErrorBf16 = 1e-2;
constexpr double kMaxRelErrorFp16 = 3e-3;
constexpr double kMaxLseError = 2e-3;

// Every 16-bit pattern of the dtype as a double: the reference reads inputs through this table.
std::vector<double> value_table(DType dtype) {
  std::vector<double> table(1 << 16);
  for (uint32_t bits = 0; bits < table.size(); ++bits) table[bits] = from_bits(uint16_t(bits), dtype);
  return table;
}

// Standard normal samples (Box-Muller on a counter-based hash), rounded to the dtype, generated on the GPU so
// that the large benchmark shapes fill quickly.
__device__ uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__global__ void fill_normal(uint16_t* out, int64_t n, uint64_t seed, bool bf16) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const uint64_t h = splitmix64(seed * 0x100000001B3ull + uint64_t(i));
    const float u1 = (float(h >> 40) + 1.f) * (1.f / 16777216.f);  // (0, 1]
    const float u2 = float((h >> 16) & 0xFFFFFF) * (1.f / 16777216.f);
    const float x = sqrtf(-2.f * logf(u1)) * cospif(2.f * u2);
    if (bf16) {
      const __nv_bfloat16 v = __float2bfloat16(x);
      out[i] = *reinterpret_cast<const uint16_t*>(&v);
    } else {
      const __half v = __float2half(x);
      out[i] = *reinterpret_cast<const uint16_t*>(&v);
    }
  }
}

// Host copies of q, k, v in the kernel's dtype (as bits) and the table of their values.
struct Inputs {
  std::vector<uint16_t> q, k, v;
  std::vector<double> value;
  double qd(size_t i) const { return value[q[i]]; }
  double kd(size_t i) const { return value[k[i]]; }
  double vd(size_t i) const { return value[v[i]]; }
};

// float64 attention of one query row: o_row [D] and lse (natural log; -inf and o = 0 when no key is visible).
void reference_row(const AttentionParams& p, const Inputs& in, int64_t b, int64_t h, int64_t i, double* o_row,
                   double* lse) {
  const int64_t D = p.head_dim, hk = p.kv_head(h);
  const IndexRange keys = jax_flash::visible_keys(p, i);
  std::fill(o_row, o_row + D, 0.0);
  if (keys.empty()) {
    *lse = -INFINITY;
    return;
  }
  const size_t q0 = size_t(((b * p.seqlen_q + i) * p.heads_q + h) * D);
  std::vector<double> s(size_t(keys.end - keys.begin));
  double mx = -INFINITY;
  for (int64_t j = keys.begin; j < keys.end; ++j) {
    const size_t k0 = size_t(((b * p.seqlen_k + j) * p.heads_k + hk) * D);
    double dot = 0;
    for (int64_t d = 0; d < D; ++d) dot += in.qd(q0 + d) * in.kd(k0 + d);
    double score = dot * p.softmax_scale;
    if (p.softcap > 0) score = p.softcap * std::tanh(score / p.softcap);
    s[size_t(j - keys.begin)] = score;
    mx = std::max(mx, score);
  }
  double sum = 0;
  for (int64_t j = keys.begin; j < keys.end; ++j) {
    const double w = std::exp(s[size_t(j - keys.begin)] - mx);
    sum += w;
    const size_t v0 = size_t(((b * p.seqlen_k + j) * p.heads_k + hk) * D);
    for (int64_t d = 0; d < D; ++d) o_row[d] += w * in.vd(v0 + d);
  }
  for (int64_t d = 0; d < D; ++d) o_row[d] /= sum;
  *lse = mx + std::log(sum);
}

struct DeviceBuffers {
  void *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr, *workspace = nullptr;
  float* lse = nullptr;
  size_t q_bytes = 0, kv_bytes = 0, lse_bytes = 0;

  DeviceBuffers(const AttentionParams& p) {
    q_bytes = size_t(p.batch * p.seqlen_q * p.heads_q * p.head_dim) * 2;
    kv_bytes = size_t(p.batch * p.seqlen_k * p.heads_k * p.head_dim) * 2;
    lse_bytes = size_t(p.batch * p.heads_q * p.seqlen_q) * sizeof(float);
    // Never zero-sized, so every pointer is a real, aligned allocation.
    CUDA_CHECK(cudaMalloc(&q, std::max<size_t>(q_bytes, 16)));
    CUDA_CHECK(cudaMalloc(&k, std::max<size_t>(kv_bytes, 16)));
    CUDA_CHECK(cudaMalloc(&v, std::max<size_t>(kv_bytes, 16)));
    CUDA_CHECK(cudaMalloc(&o, std::max<size_t>(q_bytes, 16)));
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&lse), std::max<size_t>(lse_bytes, 16)));
    const size_t ws = jax_flash::sm90::flash_fwd_sm90_workspace_bytes(p);
    if (ws) CUDA_CHECK(cudaMalloc(&workspace, ws));
  }
  ~DeviceBuffers() {
    cudaFree(q);
    cudaFree(k);
    cudaFree(v);
    cudaFree(o);
    cudaFree(lse);
    cudaFree(workspace);
  }
  // Fresh random q, k, v on the device; returns their host copies.
  Inputs randomize(DType dtype, uint64_t seed) const {
    constexpr int kFillBlocks = 1024, kFillThreads = 256;
    const bool bf16 = dtype == DType::kBFloat16;
    fill_normal<<<kFillBlocks, kFillThreads>>>(static_cast<uint16_t*>(q), int64_t(q_bytes / 2), 3 * seed, bf16);
    fill_normal<<<kFillBlocks, kFillThreads>>>(static_cast<uint16_t*>(k), int64_t(kv_bytes / 2), 3 * seed + 1, bf16);
    fill_normal<<<kFillBlocks, kFillThreads>>>(static_cast<uint16_t*>(v), int64_t(kv_bytes / 2), 3 * seed + 2, bf16);
    CUDA_CHECK(cudaGetLastError());
    Inputs in;
    in.q.resize(q_bytes / 2);
    in.k.resize(kv_bytes / 2);
    in.v.resize(kv_bytes / 2);
    CUDA_CHECK(cudaMemcpy(in.q.data(), q, q_bytes, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(in.k.data(), k, kv_bytes, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(in.v.data(), v, kv_bytes, cudaMemcpyDeviceToHost));
    in.value = value_table(dtype);
    return in;
  }
  // 0xFF.. is NaN in fp16, bf16 and fp32: any output the kernel does not write stays NaN.
  void poison() const {
    CUDA_CHECK(cudaMemset(o, 0xFF, q_bytes));
    CUDA_CHECK(cudaMemset(lse, 0xFF, lse_bytes));
  }
};

struct CheckResult {
  double rel_error = 0, lse_error = 0;
  int64_t nan_count = 0, bad_empty_rows = 0, rows_checked = 0;
  bool passed = false;
};

// Runs the kernel on the inputs in `buf` (host copies `in`) and compares every row (sampled_rows == 0) or a random
// sample of rows with the float64 reference.
CheckResult check_case(const AttentionParams& p, DType dtype, const DeviceBuffers& buf, const Inputs& in,
                       std::mt19937_64& rng, int64_t sampled_rows = 0) {
  buf.poison();
  CUDA_CHECK(jax_flash::sm90::run_flash_fwd_sm90(p, dtype, buf.q, buf.k, buf.v, buf.o, buf.lse, buf.workspace,
                                                  num_sms(), nullptr));
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<uint16_t> o(buf.q_bytes / 2);
  std::vector<float> lse(buf.lse_bytes / sizeof(float));
  CUDA_CHECK(cudaMemcpy(o.data(), buf.o, buf.q_bytes, cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(lse.data(), buf.lse, buf.lse_bytes, cudaMemcpyDeviceToHost));

  // Rows to compare: every (b, h, i), or a random sample of them for large problems.
  const int64_t total_rows = p.batch * p.heads_q * p.seqlen_q;
  std::vector<int64_t> rows;
  if (sampled_rows == 0) {
    rows.resize(size_t(total_rows));
    for (int64_t r = 0; r < total_rows; ++r) rows[size_t(r)] = r;
  } else {
    std::uniform_int_distribution<int64_t> pick(0, total_rows - 1);
    for (int64_t r = 0; r < sampled_rows; ++r) rows.push_back(pick(rng));
  }
  const int64_t D = p.head_dim;
  std::vector<double> err2(rows.size()), ref2(rows.size()), lse_err(rows.size());
  std::vector<int64_t> nans(rows.size()), bad_empty(rows.size());
  parallel_for(int64_t(rows.size()), [&](int64_t r) {
    const int64_t row = rows[size_t(r)];
    const int64_t i = row % p.seqlen_q, h = (row / p.seqlen_q) % p.heads_q, b = row / (p.seqlen_q * p.heads_q);
    std::vector<double> ref(static_cast<size_t>(D));
    double ref_lse;
    reference_row(p, in, b, h, i, ref.data(), &ref_lse);
    const uint16_t* got = &o[size_t(((b * p.seqlen_q + i) * p.heads_q + h) * D)];
    const float got_lse = lse[size_t((b * p.heads_q + h) * p.seqlen_q + i)];
    double e2 = 0, r2 = 0;
    int64_t n_nan = std::isnan(got_lse) ? 1 : 0;
    for (int64_t d = 0; d < D; ++d) {
      const double g = from_bits(got[d], dtype);
      if (std::isnan(g)) ++n_nan;
      e2 += (g - ref[size_t(d)]) * (g - ref[size_t(d)]);
      r2 += ref[size_t(d)] * ref[size_t(d)];
    }
    nans[size_t(r)] = n_nan;
    err2[size_t(r)] = e2;
    ref2[size_t(r)] = r2;
    if (std::isinf(ref_lse)) {
      // A row that sees no key: o exactly 0 and lse exactly -inf.
      bad_empty[size_t(r)] = (e2 != 0 || !(std::isinf(got_lse) && got_lse < 0)) ? 1 : 0;
      lse_err[size_t(r)] = 0;
    } else {
      bad_empty[size_t(r)] = 0;
      lse_err[size_t(r)] = std::abs(double(got_lse) - ref_lse);
    }
  });
  CheckResult res;
  double e2 = 0, r2 = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    e2 += err2[r];
    r2 += ref2[r];
    res.nan_count += nans[r];
    res.bad_empty_rows += bad_empty[r];
    res.lse_error = std::max(res.lse_error, std::isnan(lse_err[r]) ? INFINITY : lse_err[r]);
  }
  res.rows_checked = int64_t(rows.size());
  res.rel_error = r2 > 0 ? std::sqrt(e2 / r2) : std::sqrt(e2);
  const double bound = dtype == DType::kBFloat16 ? kMaxRelErrorBf16 : kMaxRelErrorFp16;
  res.passed = res.nan_count == 0 && res.bad_empty_rows == 0 && res.rel_error <= bound && res.lse_error <= kMaxLseError;
  return res;
}

// A fresh problem: new buffers, new random inputs, every row compared.
CheckResult check_fresh(const AttentionParams& p, DType dtype, std::mt19937_64& rng) {
  const DeviceBuffers buf(p);
  const Inputs in = buf.randomize(dtype, rng());
  return check_case(p, dtype, buf, in, rng);
}

int run_checks(bool quick) {
  std::mt19937_64 rng(20260522);
  const int64_t seqlens[] = {1, 7, 129, 1000};
  const int64_t head_dims[] = {64, 128, 256, 40, 96, 200};
  const int64_t groups[] = {1, 2, 8};
  const DType dtypes[] = {DType::kBFloat16, DType::kFloat16};
  int failures = 0, cases = 0;
  double worst_rel[2] = {0, 0}, worst_lse = 0;
  int mode_cursor = 0, group_cursor = 0;
  auto report = [&](const AttentionParams& p, DType dtype, const char* mode, const CheckResult& r) {
    ++cases;
    worst_rel[dtype == DType::kBFloat16 ? 0 : 1] = std::max(worst_rel[dtype == DType::kBFloat16 ? 0 : 1], r.rel_error);
    worst_lse = std::max(worst_lse, r.lse_error);
    if (!r.passed) ++failures;
    std::printf("%s %-15s %s rel_err %.2e lse_err %.2e nan %lld bad_empty_rows %lld\n", r.passed ? "PASS" : "FAIL",
                mode, describe(p, dtype).c_str(), r.rel_error, r.lse_error, (long long)r.nan_count,
                (long long)r.bad_empty_rows);
  };
  for (DType dtype : dtypes) {
    for (int64_t d : head_dims) {
      if (quick && d != 128 && d != 64) continue;
      for (int64_t sq : seqlens) {
        for (int64_t sk : seqlens) {
          if (quick && (sq == 1000 || sk == 1000)) continue;
          const MaskMode& mode = kMaskModes[mode_cursor++ % kNumMaskModes];
          const int64_t g = groups[group_cursor++ % 3];
          const int64_t hk = 1 + (sq + sk) % 2, batch = 1 + (sq * 3 + sk) % 2;
          const AttentionParams p = with_mode(make_params(batch, sq, sk, hk * g, hk, d), mode);
          report(p, dtype, mode.name, check_fresh(p, dtype, rng));
        }
      }
    }
    // Sequences past the short-sequence tile switch (tile_configs.h), so the larger tiles meet every mask too.
    for (int64_t d : {64, 128, 40, 96}) {
      if (quick) continue;
      for (const MaskMode& mode : kMaskModes) {
        const AttentionParams p = with_mode(make_params(1, 1100, 1300, 4, 2, d), mode);
        report(p, dtype, mode.name, check_fresh(p, dtype, rng));
      }
    }
    // No keys at all: every row o = 0, lse = -inf.
    AttentionParams empty = make_params(2, 129, 0, 4, 2, 128);
    report(empty, dtype, "no-keys", check_fresh(empty, dtype, rng));
    empty.window_right = 0;
    report(empty, dtype, "no-keys-causal", check_fresh(empty, dtype, rng));
  }
  std::printf("checks: %d cases, %d failed; worst rel_err bf16 %.2e fp16 %.2e; worst lse_err %.2e\n", cases,
              failures, worst_rel[0], worst_rel[1], worst_lse);
  return failures;
}

// The FlashAttention-3 paper's ablation shape, with and without ping-pong and the intra-warpgroup overlap.
void run_ablation(uint64_t seed) {
  constexpr int kBatches = 5, kLaunchesPerBatch = 10;
  const int sms = num_sms();
  AttentionParams p = make_params(4, 8448, 8448, 16, 16, 128);
  const DeviceBuffers buf(p);
  buf.randomize(DType::kBFloat16, seed);
  for (const AblationVariant& variant : ablation_variants()) {
    const float ms = median_ms(
        [&] { return variant.launch(p, buf.q, buf.k, buf.v, buf.o, buf.lse, sms); }, kBatches, kLaunchesPerBatch);
    std::printf("ablation B4 S8448 H16 D128 non-causal %-32s %.3f ms %.1f TFLOP/s\n", variant.name, ms,
                attention_flops(p, false) / (ms * 1e-3) / 1e12);
  }
}

// Timings on the FlashAttention-3 paper grid: batch x seqlen = 16k tokens, heads x head_dim = 2048, bf16.
int run_bench() {
  constexpr int64_t kTokens = 16384, kModelDim = 2048;
  constexpr int kBatches = 5, kLaunchesPerBatch = 10;
  constexpr int64_t kSampledRows = 48;
  std::mt19937_64 rng(7);
  int failures = 0;
  const int sms = num_sms();
  std::printf("%-5s %-7s %-6s %-4s %-4s %-9s %-8s %s\n", "D", "seqlen", "causal", "B", "H", "ms", "TFLOP/s",
              "check(sampled rows)");
  for (int64_t d : {64, 128, 256}) {
    for (int64_t s : {512, 1024, 2048, 4096, 8192, 16384}) {
      for (bool causal : {false, true}) {
        AttentionParams p = make_params(kTokens / s, s, s, kModelDim / d, kModelDim / d, d);
        if (causal) p.window_right = 0;
        const DeviceBuffers buf(p);
        const Inputs in = buf.randomize(DType::kBFloat16, rng());
        const CheckResult r = check_case(p, DType::kBFloat16, buf, in, rng, kSampledRows);
        if (!r.passed) ++failures;
        const float ms = median_ms(
            [&] {
              return jax_flash::sm90::run_flash_fwd_sm90(p, DType::kBFloat16, buf.q, buf.k, buf.v, buf.o, buf.lse,
                                                         buf.workspace, sms, nullptr);
            },
            kBatches, kLaunchesPerBatch);
        std::printf("%-5lld %-7lld %-6s %-4lld %-4lld %-9.3f %-8.1f %s rel_err %.1e\n", (long long)d, (long long)s,
                    causal ? "yes" : "no", (long long)p.batch, (long long)p.heads_q, ms,
                    attention_flops(p, causal) / (ms * 1e-3) / 1e12, r.passed ? "PASS" : "FAIL", r.rel_error);
        std::fflush(stdout);
      }
    }
  }
  run_ablation(rng());
  // Tile-shape alternatives on the grid (TFLOP/s).
  for (const TileVariant& variant : tile_variants()) {
    std::printf("tiles %-30s", variant.name);
    for (int64_t s : {512, 1024, 2048, 4096, 8192, 16384}) {
      for (bool causal : {false, true}) {
        AttentionParams q = make_params(kTokens / s, s, s, kModelDim / variant.head_dim, kModelDim / variant.head_dim,
                                        variant.head_dim);
        if (causal) q.window_right = 0;
        const DeviceBuffers vbuf(q);
        vbuf.randomize(DType::kBFloat16, rng());
        const float ms = median_ms(
            [&] {
              return variant.launch(q, vbuf.q, vbuf.k, vbuf.v, vbuf.o, vbuf.lse, static_cast<int*>(vbuf.workspace),
                                    sms);
            },
            kBatches, kLaunchesPerBatch);
        std::printf(" %lld%s %.0f", (long long)s, causal ? "c" : "", attention_flops(q, causal) / (ms * 1e-3) / 1e12);
      }
    }
    std::printf("\n");
    std::fflush(stdout);
  }
  return failures;
}

// One shape of the grid, timed over `reps` runs (a profiler can pick single launches out of them).
int run_time(int64_t d, int64_t s, bool causal, int reps) {
  constexpr int64_t kTokens = 16384, kModelDim = 2048;
  AttentionParams p = make_params(kTokens / s, s, s, kModelDim / d, kModelDim / d, d);
  if (causal) p.window_right = 0;
  const DeviceBuffers buf(p);
  buf.randomize(DType::kBFloat16, 11);
  const int sms = num_sms();
  const float ms = median_ms(
      [&] {
        return jax_flash::sm90::run_flash_fwd_sm90(p, DType::kBFloat16, buf.q, buf.k, buf.v, buf.o, buf.lse,
                                                   buf.workspace, sms, nullptr);
      },
      1, reps);
  std::printf("D %lld seqlen %lld causal %d: %.3f ms %.1f TFLOP/s (%d back-to-back launches)\n", (long long)d,
              (long long)s, int(causal), ms, attention_flops(p, causal) / (ms * 1e-3) / 1e12, reps);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "check";
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, sm_%d%d\n", prop.name, prop.multiProcessorCount, prop.major, prop.minor);
  int failures = 0;
  if (mode == "check" || mode == "quick") failures += run_checks(mode == "quick");
  if (mode == "bench") failures += run_bench();
  if (mode == "ablation") run_ablation(7);
  if (mode == "time" && argc == 6) failures += run_time(std::atoll(argv[2]), std::atoll(argv[3]), std::atoi(argv[4]) != 0, std::atoi(argv[5]));
  std::printf("%s: %d failures\n", mode.c_str(), failures);
  return failures == 0 ? 0 : 1;
}
