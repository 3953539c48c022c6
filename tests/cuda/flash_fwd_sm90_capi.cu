// A C entry point to the Hopper forward (bf16) for drivers that load it with ctypes: the peer benchmark
// (flash_fwd_sm90_peer_bench.py) times it beside PyTorch's cuDNN attention in one process, on the same tensors.
// It links only the bf16 tile configurations (flash_fwd_sm90_hdim*_bf16.cu), so two builds of the kernels can be
// loaded side by side (link with -Bsymbolic) and compared in one run.
#include <cuda_runtime.h>

#include <cstdint>

#include "common/attention_params.h"
#include "sm90/flash_fwd_launch.h"
#include "sm90/tile_configs.h"

namespace {

using jax_flash::AttentionParams;
using Bf16 = cutlass::bfloat16_t;

template <int kTile>
cudaError_t launch_tile(const AttentionParams& p, const void* q, const void* k, const void* v, void* o, float* lse,
                        int* tile_counter, int num_sms, cudaStream_t stream) {
  // The library's schedule: dynamic (the counter) only for masked problems.
  const bool masked = jax_flash::sm90::has_window(p);
  int* counter = masked ? tile_counter : nullptr;
  return jax_flash::sm90::with_tuned_config<Bf16, kTile>(p, masked, [&](auto traits) {
    return jax_flash::sm90::launch_flash_fwd<decltype(traits)>(p, q, k, v, o, lse, counter, num_sms, stream);
  });
}

}  // namespace

// q [B, Sq, Hq, D], k/v [B, Sk, Hk, D], o like q, lse [B, Hq, Sq] fp32; window bounds < 0 mean unbounded;
// `workspace`: 16 bytes of device memory (the tile counter of masked problems). Returns a cudaError_t.
extern "C" int jax_flash_sm90_fwd_bf16(const void* q, const void* k, const void* v, void* o, float* lse,
                                       void* workspace, int64_t batch, int64_t seqlen_q, int64_t seqlen_k,
                                       int64_t heads_q, int64_t heads_k, int64_t head_dim, float softmax_scale,
                                       float softcap, int64_t window_left, int64_t window_right,
                                       int64_t diagonal_offset, int num_sms, void* stream) {
  AttentionParams p;
  p.batch = batch;
  p.seqlen_q = seqlen_q;
  p.seqlen_k = seqlen_k;
  p.heads_q = heads_q;
  p.heads_k = heads_k;
  p.head_dim = head_dim;
  p.softmax_scale = softmax_scale;
  p.softcap = softcap;
  p.window_left = window_left < 0 ? jax_flash::kUnbounded : window_left;
  p.window_right = window_right < 0 ? jax_flash::kUnbounded : window_right;
  p.diagonal_offset = diagonal_offset;
  auto* counter = static_cast<int*>(workspace);
  auto* s = static_cast<cudaStream_t>(stream);
  if (head_dim <= 0 || head_dim % 8 != 0) return int(cudaErrorInvalidValue);
  // A build of some head-dim tiles only (build_sm90_test.sh HEAD_DIMS=...) refuses the others.
#if JAX_FLASH_SM90_TILE_64
  if (head_dim <= 64) return int(launch_tile<64>(p, q, k, v, o, lse, counter, num_sms, s));
#endif
#if JAX_FLASH_SM90_TILE_128
  if (head_dim <= 128) return int(launch_tile<128>(p, q, k, v, o, lse, counter, num_sms, s));
#endif
#if JAX_FLASH_SM90_TILE_256
  if (head_dim <= 256) return int(launch_tile<256>(p, q, k, v, o, lse, counter, num_sms, s));
#endif
  return int(cudaErrorInvalidValue);
}
