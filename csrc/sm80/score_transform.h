// From the raw dot product x = q.k to the score the softmax exponentiates. Without softcap the score is
// x * softmax_scale; with softcap c it is c * tanh(x * softmax_scale / c). The kernels keep y (x, or the tanh) in the
// accumulator and fold the remaining factor into the exp2 argument: score * log2(e) = y * score_scale_log2.
#pragma once

#include <cute/tensor.hpp>

#include "common/attention_params.h"

namespace jax_flash::sm80 {

constexpr float kLog2e = 1.4426950408889634f;

struct ScoreScales {
  bool softcapped;
  float tanh_in;           // softcap: y = tanh(x * tanh_in)
  float score_scale;       // score = y * score_scale (natural units, for lse)
  float score_scale_log2;  // score * log2(e) = y * score_scale_log2

  JF_HOST_DEVICE static ScoreScales from(const AttentionParams& p) {
    const bool capped = p.softcap > 0.0f;
    const float scale = capped ? p.softcap : p.softmax_scale;
    return {capped, capped ? p.softmax_scale / p.softcap : 0.0f, scale, scale * kLog2e};
  }
};

// Hardware tanh (sm75+), relative error about 2^-11: below the rounding of the 16-bit inputs and outputs.
__device__ __forceinline__ float fast_tanh(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// x -> tanh(x * tanh_in), in place over a fragment.
template <typename Fragment>
__device__ __forceinline__ void apply_softcap(Fragment& acc, float tanh_in) {
  CUTE_UNROLL
  for (int i = 0; i < cute::size(acc); ++i) acc(i) = fast_tanh(acc(i) * tanh_in);
}

}  // namespace jax_flash::sm80
