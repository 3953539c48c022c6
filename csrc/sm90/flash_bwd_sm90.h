// The Hopper (sm_90a) attention backward in the FlashAttention-3 design: the launch entry point the CUDA handler
// calls on compute capability 9.0. Host-only header (no CUTLASS), so the handler includes it cheaply.
//
// Contract (csrc/common/attention_params.h): dout, q, o, dq [B, Sq, Hq, D]; k, v, dk, dv [B, Sk, Hk, D]; lse,
// dlse [B, Hq, Sq] float32; all contiguous, 16-byte aligned. The mask is csrc/common/mask.h and softcap; rows that
// see no key (lse = -inf) contribute nothing and get dq = 0. GQA/MQA: dk, dv are summed over the query-head group.
#pragma once

#include <cuda_runtime.h>

#include "common/attention_params.h"
#include "sm90/flash_fwd_sm90.h"

namespace jax_flash::sm90 {

struct BwdBuffers {
  const void* dout;
  const void* q;
  const void* k;
  const void* v;
  const void* o;
  const float* lse;
  const float* dlse;
  void* dq;
  void* dk;
  void* dv;
  float* dq_accum;   // workspace [B, Sq, Hq, D] float32, any contents
  float* softmax_d;  // workspace [B, Hq, Sq] float32, any contents
  // Workspace [B, Hq, Sq] int32 (any contents), or null. With it, key blocks add their dQ into each query block in
  // ascending order (common/dq_order.h) and dq is bitwise reproducible; without it they add as they come.
  int* dq_semaphore;
};

// True when this build has a backward kernel for the problem (the same conditions as the forward, for the
// head-dim tiles the backward compiles). The caller runs another kernel when this is false.
bool flash_bwd_sm90_supports(const AttentionParams& p, DType dtype);

// Enqueues preprocess, main kernel and postprocess on `stream`. Allocates nothing and never synchronises. Without
// buffers.dq_semaphore the float32 sums of dq are added in an unspecified order, so dq may differ in its last bits
// from run to run.
cudaError_t run_flash_bwd_sm90(const AttentionParams& p, DType dtype, const BwdBuffers& buffers, int num_sms,
                               cudaStream_t stream);

}  // namespace jax_flash::sm90
