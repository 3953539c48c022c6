// What the standalone Hopper harnesses (flash_fwd_sm90_test.cu, flash_bwd_sm90_test.cu) share: CUDA error checks,
// 16-bit float conversion, problem construction, the mask modes of the correctness sweeps and kernel timing.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "common/attention_params.h"
#include "common/mask.h"
#include "sm90/flash_fwd_sm90.h"

#define CUDA_CHECK(expr)                                                                              \
  do {                                                                                                \
    const cudaError_t status_ = (expr);                                                               \
    if (status_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(status_)); \
      std::exit(2);                                                                                   \
    }                                                                                                 \
  } while (0)

namespace jax_flash::harness {

using sm90::DType;

// x rounded to the dtype, as its 16 bits.
inline uint16_t to_bits(double x, DType dtype) {
  uint16_t bits;
  if (dtype == DType::kBFloat16) {
    const __nv_bfloat16 h = __float2bfloat16(float(x));
    std::memcpy(&bits, &h, 2);
  } else {
    const __half h = __float2half(float(x));
    std::memcpy(&bits, &h, 2);
  }
  return bits;
}

inline double from_bits(uint16_t bits, DType dtype) {
  if (dtype == DType::kBFloat16) {
    __nv_bfloat16 h;
    std::memcpy(&h, &bits, 2);
    return __bfloat162float(h);
  }
  __half h;
  std::memcpy(&h, &bits, 2);
  return __half2float(h);
}

inline const char* dtype_name(DType d) { return d == DType::kBFloat16 ? "bf16" : "fp16"; }

// body(i) for i in [0, n), spread over the host's cores (the float64 references are the slow part of a sweep).
inline void parallel_for(int64_t n, const std::function<void(int64_t)>& body) {
  const int workers = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w)
    threads.emplace_back([&, w] {
      for (int64_t i = w; i < n; i += workers) body(i);
    });
  for (auto& t : threads) t.join();
}

inline int num_sms() {
  int device, sms;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

inline std::string describe(const AttentionParams& p, DType dtype) {
  char buf[256];
  std::snprintf(buf, sizeof(buf), "%s B%lld Sq%lld Sk%lld Hq%lld Hk%lld D%lld win(%lld,%lld) off%lld cap%g",
                dtype_name(dtype), (long long)p.batch, (long long)p.seqlen_q, (long long)p.seqlen_k,
                (long long)p.heads_q, (long long)p.heads_k, (long long)p.head_dim, (long long)p.window_left,
                (long long)p.window_right, (long long)p.diagonal_offset, p.softcap);
  return buf;
}

// A problem without mask or softcap, scaled by 1/sqrt(d).
inline AttentionParams make_params(int64_t b, int64_t sq, int64_t sk, int64_t hq, int64_t hk, int64_t d) {
  AttentionParams p;
  p.batch = b;
  p.seqlen_q = sq;
  p.seqlen_k = sk;
  p.heads_q = hq;
  p.heads_k = hk;
  p.head_dim = d;
  p.softmax_scale = float(1.0 / std::sqrt(double(d)));
  return p;
}

// The mask modes the correctness sweeps cycle through.
struct MaskMode {
  const char* name;
  int64_t window_left, window_right, diagonal_offset;
  float softcap;
};
constexpr MaskMode kMaskModes[] = {
    {"none", kUnbounded, kUnbounded, 0, 0.f},
    {"causal", kUnbounded, 0, 0, 0.f},
    {"window", 96, 17, 0, 0.f},
    {"softcap", kUnbounded, kUnbounded, 0, 30.f},
    {"causal+softcap", kUnbounded, 0, 0, 5.f},
    {"left-window", 200, kUnbounded, 0, 0.f},
    {"diagonal-only", 0, 0, 0, 0.f},
    {"causal-offset", kUnbounded, 0, -150, 0.f},
    {"causal+offset", kUnbounded, 0, 150, 0.f},
};
constexpr int kNumMaskModes = sizeof(kMaskModes) / sizeof(kMaskModes[0]);

inline AttentionParams with_mode(AttentionParams p, const MaskMode& mode) {
  p.window_left = mode.window_left;
  p.window_right = mode.window_right;
  p.diagonal_offset = mode.diagonal_offset;
  p.softcap = mode.softcap;
  return p;
}

// Median over `batches` of the mean time of `launches` back-to-back launches, in milliseconds, measured with CUDA
// events (back-to-back launches keep the host's launch overhead out of the kernel time, as a jitted JAX loop or
// triton's do_bench would). One batch of launches first, untimed, as warm-up.
inline float median_ms(const std::function<cudaError_t()>& launch, int batches, int launches) {
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < launches; ++i) CUDA_CHECK(launch());
  std::vector<float> times;
  for (int b = 0; b < batches; ++b) {
    CUDA_CHECK(cudaEventRecord(start));
    for (int i = 0; i < launches; ++i) CUDA_CHECK(launch());
    CUDA_CHECK(cudaEventRecord(stop));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms / launches);
  }
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// Forward matmul FLOPs (4 B Hq Sq Sk D), halved under a causal mask with Sq = Sk.
inline double attention_flops(const AttentionParams& p, bool causal) {
  const double f = 4.0 * double(p.batch) * double(p.heads_q) * double(p.seqlen_q) * double(p.seqlen_k) * double(p.head_dim);
  return causal ? f / 2 : f;
}

}  // namespace jax_flash::harness
