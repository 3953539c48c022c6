// Branch-free float32 math that the compiler vectorises inside the softmax loops.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace jax_flash::cpu {

// 2^x for x <= 0 (the softmax only exponentiates scores minus their running max); x <= -127 gives exactly 0.
// Relative error about 1e-8: round x to the nearest integer n, evaluate 2^f for f = x - n in [-0.5, 0.5] with a
// degree-7 Taylor polynomial of e^(f ln 2), and put n into the exponent field.
inline float exp2_nonpositive(float x) {
  constexpr float kMinExponent = -127.0f;  // 2^-127 is below the smallest normal float: flush to 0
  x = x < kMinExponent ? kMinExponent : x;
  const float n = std::floor(x + 0.5f);
  const float f = (x - n) * 0.693147180559945309f;  // f ln 2 in [-0.347, 0.347]
  float p = 1.0f / 5040.0f;
  p = p * f + 1.0f / 720.0f;
  p = p * f + 1.0f / 120.0f;
  p = p * f + 1.0f / 24.0f;
  p = p * f + 1.0f / 6.0f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  const uint32_t exponent_bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &exponent_bits, sizeof scale);
  return p * scale;
}

}  // namespace jax_flash::cpu
