// The Hopper (sm_90a) attention forward in the FlashAttention-3 design: the launch entry point the CUDA handler
// calls on compute capability 9.0. Host-only header (no CUTLASS), so the handler includes it cheaply.
//
// Contract (csrc/common/attention_params.h): q [B, Sq, Hq, D], k/v [B, Sk, Hk, D], o like q, lse [B, Hq, Sq] fp32
// natural log, all contiguous. The mask is csrc/common/mask.h (bottom-right causal, window, diagonal_offset) and
// softcap; rows that see no key get o = 0 and lse = -inf. GQA/MQA read kv head h / (Hq / Hk), never repeated.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "common/attention_params.h"

namespace jax_flash::sm90 {

enum class DType { kFloat16, kBFloat16 };

// True when this build has a kernel for the problem: fp16/bf16, head_dim a multiple of 8 up to the largest head
// dim compiled in (a head dim routes to the smallest compiled tile that holds it), and sizes that fit the TMA
// descriptors. The caller falls back to another kernel (or reports an error) when this is false.
bool flash_fwd_sm90_supports(const AttentionParams& p, DType dtype);

// Device scratch the launch needs: the tile counter of the dynamic schedule (masked problems, or
// `dynamic_schedule`). Pass a buffer of at least this many bytes (16-byte aligned) as `workspace`; it may be
// uninitialised, the launch resets it on `stream` when it uses it.
size_t flash_fwd_sm90_workspace_bytes(const AttentionParams& p);

// Enqueues the forward on `stream`. Allocates nothing and never synchronises. `num_sms` is the persistent grid size
// (the device's multiprocessor count, less any left to concurrent work). `dynamic_schedule` makes CTAs take tiles
// from a counter even when all tiles have equal work (masked problems always do), so that CTAs that start late
// (SMs held by a concurrent kernel) leave their share to the others. q/k/v/o must be 16-byte aligned. Returns the
// launch status.
cudaError_t run_flash_fwd_sm90(const AttentionParams& p, DType dtype, const void* q, const void* k, const void* v,
                               void* o, float* lse, void* workspace, int num_sms, cudaStream_t stream,
                               bool dynamic_schedule = false);

}  // namespace jax_flash::sm90
