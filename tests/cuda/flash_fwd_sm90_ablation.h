// Variants of the Hopper forward measured beside the tuned configurations (bf16):
// - the FlashAttention-3 paper's ablation: the head-dim-128 (128 x 176) configuration with and without ping-pong
//   between consumer warpgroups and with and without the intra-warpgroup GEMM-softmax overlap;
// - alternative tile shapes per head dim, for the tile choice.
#pragma once

#include <cuda_runtime.h>

#include <vector>

#include "common/attention_params.h"

struct AblationVariant {
  const char* name;
  // Launches the variant on bf16 q, k, v (non-causal, so no workspace).
  cudaError_t (*launch)(const jax_flash::AttentionParams& p, const void* q, const void* k, const void* v, void* o,
                        float* lse, int num_sms);
};

std::vector<AblationVariant> ablation_variants();

struct TileVariant {
  const char* name;
  int head_dim;
  // Launches the variant on bf16 q, k, v; `tile_counter` is needed for causal/window problems.
  cudaError_t (*launch)(const jax_flash::AttentionParams& p, const void* q, const void* k, const void* v, void* o,
                        float* lse, int* tile_counter, int num_sms);
};

std::vector<TileVariant> tile_variants();
