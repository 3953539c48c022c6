// Standalone check and benchmark of the Hopper backward (csrc/sm90/flash_bwd_*), independent of JAX.
//
//   flash_bwd_sm90_test check   correctness sweep: dq, dk, dv against a float64 CPU reference (outputs and
//                               workspaces poisoned with NaN first); deterministic cases run twice and must give
//                               bitwise identical dq
//   flash_bwd_sm90_test quick   the small cases of the sweep (for compute-sanitizer memcheck)
//   flash_bwd_sm90_test tiny    three cases (for compute-sanitizer racecheck)
//   flash_bwd_sm90_test bench   backward TFLOP/s (2.5 x forward FLOPs) on the FlashAttention-3 paper grid, bf16,
//                               head dims 64, 128, 256 (those this build has)
//   flash_bwd_sm90_test bench D S C   only head dim D, seqlen S, causal C (0/1) of that grid (for ncu)
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

#include "harness.h"
#include "sm90/flash_bwd_sm90.h"

using jax_flash::AttentionParams;
using jax_flash::IndexRange;
using jax_flash::kUnbounded;
using jax_flash::sm90::DType;
using namespace jax_flash::harness;

namespace {

// Relative L2 error bounds of each gradient by dtype (P and dS are rounded to the dtype before their GEMMs).
constexpr double kMaxRelErrorBf16 = 2e-2;
constexpr double kMaxRelErrorFp16 = 4e-3;
// The backward does 2.5 times the forward's matmul FLOPs (five GEMMs against two).
constexpr double kBackwardFlopFactor = 2.5;

// One problem on the host: inputs rounded to the dtype (as doubles), the forward outputs o and lse from a float64
// forward (o rounded to the dtype, as the kernel receives it), and the float64 reference gradients.
struct Problem {
  AttentionParams p;
  DType dtype;
  std::vector<double> q, k, v, dout, o, dlse, lse;
  std::vector<double> dq, dk, dv;

  size_t qi(int64_t b, int64_t i, int64_t h) const { return size_t(((b * p.seqlen_q + i) * p.heads_q + h) * p.head_dim); }
  size_t ki(int64_t b, int64_t j, int64_t h) const { return size_t(((b * p.seqlen_k + j) * p.heads_k + h) * p.head_dim); }
  size_t si(int64_t b, int64_t h, int64_t i) const { return size_t((b * p.heads_q + h) * p.seqlen_q + i); }

  // The score of (query i, key j) after scale and softcap, and its derivative with respect to q.k.
  void score(int64_t b, int64_t h, int64_t i, int64_t j, double* s, double* ds_dqk) const {
    const size_t q0 = qi(b, i, h), k0 = ki(b, j, p.kv_head(h));
    double dot = 0;
    for (int64_t d = 0; d < p.head_dim; ++d) dot += q[q0 + d] * k[k0 + d];
    const double x = dot * p.softmax_scale;
    if (p.softcap > 0) {
      const double t = std::tanh(x / p.softcap);
      *s = p.softcap * t;
      *ds_dqk = p.softmax_scale * (1 - t * t);
    } else {
      *s = x;
      *ds_dqk = p.softmax_scale;
    }
  }

  Problem(const AttentionParams& p_, DType dtype_, std::mt19937_64& rng) : p(p_), dtype(dtype_) {
    const int64_t D = p.head_dim;
    std::normal_distribution<double> normal;
    auto fill = [&](std::vector<double>& x, int64_t n) {
      x.resize(size_t(n));
      for (auto& e : x) e = from_bits(to_bits(normal(rng), dtype), dtype);
    };
    const int64_t nq = p.batch * p.seqlen_q * p.heads_q * D, nk = p.batch * p.seqlen_k * p.heads_k * D;
    const int64_t rows = p.batch * p.heads_q * p.seqlen_q;
    fill(q, nq);
    fill(k, nk);
    fill(v, nk);
    fill(dout, nq);
    dlse.resize(size_t(rows));
    for (auto& e : dlse) e = 0.5 * normal(rng);
    o.assign(size_t(nq), 0.0);
    lse.assign(size_t(rows), -INFINITY);
    dq.assign(size_t(nq), 0.0);
    dk.assign(size_t(nk), 0.0);
    dv.assign(size_t(nk), 0.0);
    // softmax_d of the reference: rowsum(dout * o) - dlse with the exact o, the true gradient's.
    std::vector<double> delta(size_t(rows), 0.0);
    parallel_for(rows, [&](int64_t r) {
      const int64_t i = r % p.seqlen_q, h = (r / p.seqlen_q) % p.heads_q, b = r / (p.seqlen_q * p.heads_q);
      const IndexRange keys = jax_flash::visible_keys(p, i);
      if (keys.empty()) return;
      std::vector<double> s(size_t(keys.end - keys.begin));
      double mx = -INFINITY, unused;
      for (int64_t j = keys.begin; j < keys.end; ++j) {
        score(b, h, i, j, &s[size_t(j - keys.begin)], &unused);
        mx = std::max(mx, s[size_t(j - keys.begin)]);
      }
      double sum = 0;
      for (double x : s) sum += std::exp(x - mx);
      lse[size_t(r)] = mx + std::log(sum);
      std::vector<double> orow(size_t(D), 0.0);
      for (int64_t j = keys.begin; j < keys.end; ++j) {
        const double w = std::exp(s[size_t(j - keys.begin)] - lse[size_t(r)]);
        const size_t v0 = ki(b, j, p.kv_head(h));
        for (int64_t d = 0; d < D; ++d) orow[size_t(d)] += w * v[v0 + d];
      }
      double dot = 0;
      for (int64_t d = 0; d < D; ++d) {
        dot += dout[qi(b, i, h) + d] * orow[size_t(d)];
        o[qi(b, i, h) + d] = from_bits(to_bits(orow[size_t(d)], dtype), dtype);
      }
      delta[size_t(r)] = dot - dlse[size_t(r)];
    });
    // dS of (b, h, i, j) = P (dP - delta) * dscore/dqk, P = exp(s - lse), dP = dout_i . v_j.
    auto ds = [&](int64_t b, int64_t h, int64_t i, int64_t j, double* prob) {
      double s, deriv;
      score(b, h, i, j, &s, &deriv);
      *prob = std::exp(s - lse[si(b, h, i)]);
      const size_t d0 = qi(b, i, h), v0 = ki(b, j, p.kv_head(h));
      double dp = 0;
      for (int64_t d = 0; d < D; ++d) dp += dout[d0 + d] * v[v0 + d];
      return *prob * (dp - delta[si(b, h, i)]) * deriv;
    };
    parallel_for(rows, [&](int64_t r) {
      const int64_t i = r % p.seqlen_q, h = (r / p.seqlen_q) % p.heads_q, b = r / (p.seqlen_q * p.heads_q);
      const IndexRange keys = jax_flash::visible_keys(p, i);
      for (int64_t j = keys.begin; j < keys.end; ++j) {
        double prob;
        const double g = ds(b, h, i, j, &prob);
        const size_t k0 = ki(b, j, p.kv_head(h));
        for (int64_t d = 0; d < D; ++d) dq[qi(b, i, h) + d] += g * k[k0 + d];
      }
    });
    const int64_t key_rows = p.batch * p.heads_k * p.seqlen_k;
    parallel_for(key_rows, [&](int64_t r) {
      const int64_t j = r % p.seqlen_k, hk = (r / p.seqlen_k) % p.heads_k, b = r / (p.seqlen_k * p.heads_k);
      const IndexRange queries = jax_flash::visible_queries(p, IndexRange{j, j + 1});
      const size_t k0 = ki(b, j, hk);
      for (int64_t h = hk * p.group_size(); h < (hk + 1) * p.group_size(); ++h) {
        for (int64_t i = queries.begin; i < queries.end; ++i) {
          double prob;
          const double g = ds(b, h, i, j, &prob);
          for (int64_t d = 0; d < D; ++d) {
            dk[k0 + d] += g * q[qi(b, i, h) + d];
            dv[k0 + d] += prob * dout[qi(b, i, h) + d];
          }
        }
      }
    });
  }
};

template <class T>
T* device_copy(const std::vector<T>& host) {
  T* ptr;
  CUDA_CHECK(cudaMalloc(&ptr, std::max<size_t>(host.size() * sizeof(T), 16)));
  if (!host.empty()) CUDA_CHECK(cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return ptr;
}

std::vector<uint16_t> bits_of(const std::vector<double>& x, DType dtype) {
  std::vector<uint16_t> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = to_bits(x[i], dtype);
  return out;
}

std::vector<float> floats_of(const std::vector<double>& x) { return std::vector<float>(x.begin(), x.end()); }

// Device buffers of one problem; the outputs and workspaces start as NaN (0xFF bytes in fp16, bf16 and fp32).
struct DeviceProblem {
  jax_flash::sm90::BwdBuffers b{};
  size_t q_bytes, kv_bytes, stats_bytes;
  std::vector<void*> owned;
  int* semaphore;  // the deterministic mode's workspace (BwdBuffers::dq_semaphore when a case asks for it)

  explicit DeviceProblem(const Problem& pr) {
    const AttentionParams& p = pr.p;
    q_bytes = size_t(p.batch * p.seqlen_q * p.heads_q * p.head_dim) * 2;
    kv_bytes = size_t(p.batch * p.seqlen_k * p.heads_k * p.head_dim) * 2;
    stats_bytes = size_t(p.batch * p.heads_q * p.seqlen_q) * 4;
    auto keep = [&](auto* ptr) {
      owned.push_back(ptr);
      return ptr;
    };
    b.q = keep(device_copy(bits_of(pr.q, pr.dtype)));
    b.k = keep(device_copy(bits_of(pr.k, pr.dtype)));
    b.v = keep(device_copy(bits_of(pr.v, pr.dtype)));
    b.dout = keep(device_copy(bits_of(pr.dout, pr.dtype)));
    b.o = keep(device_copy(bits_of(pr.o, pr.dtype)));
    b.lse = keep(device_copy(floats_of(pr.lse)));
    b.dlse = keep(device_copy(floats_of(pr.dlse)));
    b.dq = keep(device_copy(std::vector<uint16_t>(q_bytes / 2)));
    b.dk = keep(device_copy(std::vector<uint16_t>(kv_bytes / 2)));
    b.dv = keep(device_copy(std::vector<uint16_t>(kv_bytes / 2)));
    b.dq_accum = keep(device_copy(std::vector<float>(q_bytes / 2)));
    b.softmax_d = keep(device_copy(std::vector<float>(stats_bytes / 4)));
    semaphore = keep(device_copy(std::vector<int>(stats_bytes / 4)));
  }
  ~DeviceProblem() {
    for (void* ptr : owned) cudaFree(ptr);
  }
  void poison() const {
    CUDA_CHECK(cudaMemset(b.dq, 0xFF, q_bytes));
    CUDA_CHECK(cudaMemset(b.dk, 0xFF, kv_bytes));
    CUDA_CHECK(cudaMemset(b.dv, 0xFF, kv_bytes));
    CUDA_CHECK(cudaMemset(b.dq_accum, 0xFF, q_bytes * 2));
    CUDA_CHECK(cudaMemset(b.softmax_d, 0xFF, stats_bytes));
    CUDA_CHECK(cudaMemset(semaphore, 0xFF, stats_bytes));
  }
};

struct GradError {
  double rel = 0;
  int64_t nan = 0;
};

GradError compare(const void* device, const std::vector<double>& ref, DType dtype) {
  std::vector<uint16_t> got(ref.size());
  if (!ref.empty()) CUDA_CHECK(cudaMemcpy(got.data(), device, ref.size() * 2, cudaMemcpyDeviceToHost));
  GradError e;
  double e2 = 0, r2 = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = from_bits(got[i], dtype);
    if (std::isnan(g)) ++e.nan;
    e2 += (g - ref[i]) * (g - ref[i]);
    r2 += ref[i] * ref[i];
  }
  e.rel = r2 > 0 ? std::sqrt(e2 / r2) : std::sqrt(e2);
  return e;
}

std::vector<uint16_t> device_bits(const void* device, size_t count) {
  std::vector<uint16_t> bits(count);
  if (count > 0) CUDA_CHECK(cudaMemcpy(bits.data(), device, count * 2, cudaMemcpyDeviceToHost));
  return bits;
}

// Runs the backward on one fresh problem (outputs and workspaces poisoned first): dq, dk, dv must match the
// reference. Deterministic: with the semaphore workspace, twice (poisoned again in between), and dq must come out
// bitwise the same.
bool check_case(const AttentionParams& p, DType dtype, const char* mode, std::mt19937_64& rng, double* worst,
                bool deterministic = false) {
  const Problem pr(p, dtype, rng);
  DeviceProblem dev(pr);
  if (deterministic) dev.b.dq_semaphore = dev.semaphore;
  dev.poison();
  CUDA_CHECK(jax_flash::sm90::run_flash_bwd_sm90(p, dtype, dev.b, num_sms(), nullptr));
  CUDA_CHECK(cudaDeviceSynchronize());
  const GradError dq = compare(dev.b.dq, pr.dq, dtype);
  const GradError dk = compare(dev.b.dk, pr.dk, dtype);
  const GradError dv = compare(dev.b.dv, pr.dv, dtype);
  bool reproducible = true;
  if (deterministic) {
    const std::vector<uint16_t> first = device_bits(dev.b.dq, pr.dq.size());
    dev.poison();
    CUDA_CHECK(jax_flash::sm90::run_flash_bwd_sm90(p, dtype, dev.b, num_sms(), nullptr));
    CUDA_CHECK(cudaDeviceSynchronize());
    reproducible = device_bits(dev.b.dq, pr.dq.size()) == first;
  }
  const double bound = dtype == DType::kBFloat16 ? kMaxRelErrorBf16 : kMaxRelErrorFp16;
  const bool passed = dq.nan + dk.nan + dv.nan == 0 && dq.rel <= bound && dk.rel <= bound && dv.rel <= bound &&
                      reproducible;
  *worst = std::max({*worst, dq.rel, dk.rel, dv.rel});
  std::printf("%s %-15s %s dq %.2e dk %.2e dv %.2e nan %lld%s\n", passed ? "PASS" : "FAIL", mode,
              describe(p, dtype).c_str(), dq.rel, dk.rel, dv.rel, (long long)(dq.nan + dk.nan + dv.nan),
              deterministic ? (reproducible ? " dq bitwise reproducible" : " dq NOT reproducible") : "");
  std::fflush(stdout);
  return passed;
}

int run_checks(bool quick) {
  std::mt19937_64 rng(20261122);
  const int64_t seqlens[] = {1, 7, 129, 1000};
  const int64_t head_dims[] = {64, 128, 256, 40, 96, 200};
  const int64_t groups[] = {1, 2, 8};
  const DType dtypes[] = {DType::kBFloat16, DType::kFloat16};
  int failures = 0, cases = 0, mode_cursor = 0, group_cursor = 0;
  double worst = 0;
  auto run = [&](const AttentionParams& p, DType dtype, const char* name, bool deterministic = false) {
    if (!jax_flash::sm90::flash_bwd_sm90_supports(p, dtype)) return;
    ++cases;
    if (!check_case(p, dtype, name, rng, &worst, deterministic)) ++failures;
  };
  for (DType dtype : dtypes) {
    for (int64_t d : head_dims) {
      // The quick sweep (compute-sanitizer) keeps to the compiled tiles' own head dims.
      if (quick && d != 64 && d != 128 && d != 256) continue;
      for (int64_t sq : seqlens) {
        for (int64_t sk : seqlens) {
          if (quick && (sq == 1000 || sk == 1000)) continue;
          const MaskMode& mode = kMaskModes[mode_cursor++ % kNumMaskModes];
          const int64_t g = groups[group_cursor++ % 3];
          const int64_t hk = 1 + (sq + sk) % 2, batch = 1 + (sq * 3 + sk) % 2;
          run(with_mode(make_params(batch, sq, sk, hk * g, hk, d), mode), dtype, mode.name);
        }
      }
    }
    if (!quick) {
      for (int64_t d : {64, 128, 256}) {
        for (const MaskMode& mode : kMaskModes) run(with_mode(make_params(1, 700, 900, 4, 2, d), mode), dtype, mode.name);
      }
    }
    for (int64_t d : {64, 128, 256}) {
      // Several key blocks add into each query block: causal (GQA), full, and a window (odd lengths).
      run(with_mode(make_params(1, 1000, 1000, 4, 2, d), kMaskModes[1]), dtype, "det-causal", true);
      if (!quick) {
        run(with_mode(make_params(2, 129, 1000, 2, 2, d), kMaskModes[0]), dtype, "det-none", true);
        run(with_mode(make_params(1, 700, 900, 8, 1, d), kMaskModes[2]), dtype, "det-window", true);
      }
      run(make_params(2, 129, 0, 4, 2, d), dtype, "no-keys");
      run(make_params(2, 0, 129, 4, 2, d), dtype, "no-queries");
    }
  }
  std::printf("checks: %d cases, %d failed; worst relative error %.2e\n", cases, failures, worst);
  return failures;
}

int run_tiny() {
  std::mt19937_64 rng(5);
  double worst = 0;
  int failures = 0;
  for (int64_t d : {64, 128, 256}) {
    const AttentionParams causal = with_mode(make_params(1, 129, 200, 2, 1, d), kMaskModes[1]);
    const AttentionParams capped = with_mode(make_params(1, 70, 300, 2, 2, d), kMaskModes[3]);
    for (const AttentionParams& p : {causal, capped}) {
      if (!jax_flash::sm90::flash_bwd_sm90_supports(p, DType::kBFloat16)) continue;
      if (!check_case(p, DType::kBFloat16, "tiny", rng, &worst)) ++failures;
    }
  }
  return failures;
}

// Backward TFLOP/s on the FlashAttention-3 grid: batch x seqlen = 16k tokens, heads x head_dim = 2048, bf16.
// Inputs are constant-filled (timing does not depend on values); lse = 0 keeps every P finite. only_d, only_seqlen
// and only_causal (0 or 1), where >= 0, restrict the grid to one head dim, sequence length or mask (for profilers).
int run_bench(int64_t only_d, int64_t only_seqlen, int only_causal) {
  constexpr int64_t kTokens = 16384, kModelDim = 2048;
  constexpr int kBatches = 5, kLaunchesPerBatch = 10;
  const int sms = num_sms();
  for (int64_t d : {64, 128, 256}) {
    for (int64_t s : {512, 1024, 2048, 4096, 8192, 16384}) {
      for (bool causal : {false, true}) {
        if ((only_d >= 0 && d != only_d) || (only_seqlen >= 0 && s != only_seqlen) ||
            (only_causal >= 0 && int(causal) != only_causal)) {
          continue;
        }
        AttentionParams p = make_params(kTokens / s, s, s, kModelDim / d, kModelDim / d, d);
        if (causal) p.window_right = 0;
        if (!jax_flash::sm90::flash_bwd_sm90_supports(p, DType::kBFloat16)) continue;
        const size_t nq = size_t(p.batch * s * p.heads_q * d), nstats = size_t(p.batch * p.heads_q * s);
        jax_flash::sm90::BwdBuffers b{};
        std::vector<void*> owned;
        auto alloc = [&](size_t bytes) {
          void* ptr;
          CUDA_CHECK(cudaMalloc(&ptr, bytes));
          CUDA_CHECK(cudaMemset(ptr, 0, bytes));
          owned.push_back(ptr);
          return ptr;
        };
        b.q = alloc(nq * 2), b.k = alloc(nq * 2), b.v = alloc(nq * 2), b.dout = alloc(nq * 2), b.o = alloc(nq * 2);
        b.lse = static_cast<float*>(alloc(nstats * 4)), b.dlse = static_cast<float*>(alloc(nstats * 4));
        b.dq = alloc(nq * 2), b.dk = alloc(nq * 2), b.dv = alloc(nq * 2);
        b.dq_accum = static_cast<float*>(alloc(nq * 4)), b.softmax_d = static_cast<float*>(alloc(nstats * 4));
        const float ms = median_ms(
            [&] { return jax_flash::sm90::run_flash_bwd_sm90(p, DType::kBFloat16, b, sms, nullptr); }, kBatches,
            kLaunchesPerBatch);
        const double flops = kBackwardFlopFactor * attention_flops(p, causal);
        std::printf("bench D%lld seqlen %lld %s: %.3f ms  %.1f TFLOP/s\n", (long long)d, (long long)s,
                    causal ? "causal" : "full", ms, flops / ms * 1e-9);
        std::fflush(stdout);
        for (void* ptr : owned) cudaFree(ptr);
      }
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "check";
  if (mode == "check") return run_checks(false) == 0 ? 0 : 1;
  if (mode == "quick") return run_checks(true) == 0 ? 0 : 1;
  if (mode == "tiny") return run_tiny() == 0 ? 0 : 1;
  if (mode == "bench") {
    auto arg = [&](int i) { return argc > i ? std::atoll(argv[i]) : -1; };
    return run_bench(arg(2), arg(3), int(arg(4)));
  }
  std::fprintf(stderr, "usage: %s check|quick|tiny|bench [head_dim seqlen causal(0/1)]\n", argv[0]);
  return 2;
}
