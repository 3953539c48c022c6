// The FlashAttention-3 paper's ablation on the Hopper forward: the bf16 head-dim-128 (128 x 176) configuration with
// and without ping-pong between consumer warpgroups and with and without the intra-warpgroup GEMM-softmax overlap.
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
