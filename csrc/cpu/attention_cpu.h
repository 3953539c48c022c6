// The CPU implementation of the attention contract (see common/attention_params.h for layouts): tiled, with an
// online softmax, so memory stays linear in sequence length; work is spread over threads by the caller's
// ParallelFor. float32 accumulation for every storage type.
#pragma once

#include <cstdint>
#include <functional>

#include "common/attention_params.h"
#include "cpu/element_types.h"

namespace jax_flash::cpu {

// Calls task(i) once for every i in [0, count), possibly concurrently; returns when all calls have returned.
using ParallelFor = std::function<void(int64_t count, const std::function<void(int64_t)>& task)>;

// o [B, Sq, Hq, D] and lse [B, Hq, Sq] from q, k, v. Rows that see no key get o = 0 and lse = -inf.
void attention_forward(ElementType type, const AttentionParams& params, const void* q, const void* k, const void* v,
                       void* o, float* lse, const ParallelFor& parallel_for);

// dq, dk, dv from the output cotangent dout, the forward's inputs and outputs (o, lse) and the lse cotangent dlse
// [B, Hq, Sq]. dk and dv have Hk heads: each is summed over the query heads of its group. `delta` [B, Hq, Sq] is
// scratch: it receives rowsum(dout * o) - dlse.
void attention_backward(ElementType type, const AttentionParams& params, const void* dout, const void* q,
                        const void* k, const void* v, const void* o, const float* lse, const float* dlse, void* dq,
                        void* dk, void* dv, float* delta, const ParallelFor& parallel_for);

}  // namespace jax_flash::cpu
