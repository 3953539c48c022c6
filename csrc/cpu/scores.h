// From a raw dot product x = q·k to the log2-domain score the softmax exponentiates, and the factor the backward
// pass needs. Without softcap the score is x * scale; with softcap c it is c * tanh(x * scale / c).
#pragma once

#include <cmath>

#include "common/attention_params.h"
#include "cpu/vector_math.h"

namespace jax_flash::cpu {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct ScoreMap {
  bool softcapped;
  float log2_scale;  // no softcap: score * log2(e) = x * log2_scale
  float tanh_in;     // softcap: y = x * tanh_in
  float tanh_out;    // softcap: score * log2(e) = tanh(y) * tanh_out

  explicit ScoreMap(const AttentionParams& p)
      : softcapped(p.softcap > 0.0f),
        log2_scale(p.softmax_scale * kLog2e),
        tanh_in(p.softcap > 0.0f ? p.softmax_scale / p.softcap : 0.0f),
        tanh_out(p.softcap * kLog2e) {}
};

// tanh through exp2_nonpositive so the loop vectorises; absolute error about 1e-7.
inline float tanh_vectorizable(float y) {
  const float e = exp2_nonpositive(-2.0f * kLog2e * std::fabs(y));  // e^{-2|y|} in (0, 1]
  const float magnitude = (1.0f - e) / (1.0f + e);
  return std::copysign(magnitude, y);
}

}  // namespace jax_flash::cpu
