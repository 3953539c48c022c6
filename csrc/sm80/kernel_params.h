// What the host hands the FlashAttention-2 (sm80) kernels, and the entry points each (head dim, dtype) instance
// provides. Host-only code (the FFI handlers, the dispatcher) includes this header; it pulls in no CuTe.
//
// Layouts (row-major, contiguous), as in common/attention_params.h:
//   q, o, dout, dq, dq_accum [B, Sq, Hq, D]     k, v, dk, dv [B, Sk, Hk, D]     lse, dlse, softmax_d [B, Hq, Sq]
#pragma once

#include <cuda_runtime.h>

#include "common/attention_params.h"

namespace jax_flash::sm80 {

enum class ElementKind { kFloat16, kBFloat16 };

// No instance has blocks of more rows than this; the kernels index inside a tile with 32-bit offsets, so
// kMaxTileRows * heads * head_dim must stay below 2^31 (the handlers check).
constexpr int64_t kMaxTileRows = 128;

struct ForwardArgs {
  AttentionParams params;
  const void* q;
  const void* k;
  const void* v;
  void* o;
  float* lse;
};

struct BackwardArgs {
  AttentionParams params;
  const void* dout;
  const void* q;
  const void* k;
  const void* v;
  const void* o;
  const float* lse;
  const float* dlse;  // cotangent of lse; enters through softmax_d
  void* dq;
  void* dk;
  void* dv;
  // Workspaces (outputs of the custom call, so nothing is allocated at run time):
  // [B, Sq, Hq, D] float32: dQ summed over key blocks with atomics, converted to dq at the end; the elements of each
  // full 8-row x 32-column block are permuted (common/dq_accum_order.h, warp-coalesced order).
  float* dq_accum;
  float* softmax_d;  // [B, Hq, Sq] float32: rowsum(dout * o) - dlse
  // [B, Hq, Sq] int32, or null: with it, key blocks add their dQ into each query block in ascending order
  // (common/dq_order.h), so dq is bitwise reproducible; without it they add as they come.
  int* dq_semaphore;
};

// The device a launch runs on, as the handler found it (cached per device, not queried per call).
struct LaunchContext {
  cudaStream_t stream;
  int device;
  int sm_count;
};

// One instantiation per (head dim, element type), each in its own translation unit (see kernel_instance.cu.in).
// They return the launch error, if any, and never synchronise.
template <int kHeadDim, ElementKind kElement>
cudaError_t run_forward(const ForwardArgs& args, const LaunchContext& ctx);

template <int kHeadDim, ElementKind kElement>
cudaError_t run_backward(const BackwardArgs& args, const LaunchContext& ctx);

// Dynamic shared memory the instance needs per block, to check against the device before launching.
template <int kHeadDim, ElementKind kElement>
int forward_smem_bytes();

template <int kHeadDim, ElementKind kElement>
int backward_smem_bytes();

}  // namespace jax_flash::sm80
