// Storage types the CPU kernels read and write, and their conversions to and from float32 (the compute type).
// float16 and bfloat16 are plain 16-bit patterns; conversions round to nearest even, as XLA does.
#pragma once

#include <cstdint>
#include <cstring>

namespace jax_flash::cpu {

struct Float16 {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

inline uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline float bits_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

inline float to_float(float x) { return x; }
inline float to_float(BFloat16 x) { return bits_float(static_cast<uint32_t>(x.bits) << 16); }
inline float to_float(Float16 x) {
  const uint32_t sign = static_cast<uint32_t>(x.bits & 0x8000u) << 16;
  const uint32_t exponent = (x.bits >> 10) & 0x1fu;
  const uint32_t mantissa = x.bits & 0x3ffu;
  if (exponent == 0x1fu) return bits_float(sign | 0x7f800000u | (mantissa << 13));  // inf / nan
  if (exponent != 0) return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  // Subnormal half: mantissa * 2^-24, exact in float32.
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
  return sign ? -magnitude : magnitude;
}

template <typename T>
T from_float(float x);

template <>
inline float from_float<float>(float x) {
  return x;
}

template <>
inline BFloat16 from_float<BFloat16>(float x) {
  const uint32_t u = float_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((u >> 16) | 0x40u)};  // quiet nan
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return {static_cast<uint16_t>((u + rounding) >> 16)};
}

template <>
inline Float16 from_float<Float16>(float x) {
  const uint32_t u = float_bits(x);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t magnitude = u & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return {static_cast<uint16_t>(sign | 0x7e00u)};  // quiet nan
  if (magnitude >= 0x477ff000u) return {static_cast<uint16_t>(sign | 0x7c00u)};  // rounds to inf (>= 65520)
  if (magnitude < 0x38800000u) {
    // Result is subnormal (or zero) in half: round |x| / 2^-24 to the nearest even integer.
    const float scaled = bits_float(magnitude) * 16777216.0f;  // exact: power-of-two scale
    uint32_t integer = static_cast<uint32_t>(scaled);
    const float remainder = scaled - static_cast<float>(integer);
    if (remainder > 0.5f || (remainder == 0.5f && (integer & 1u))) ++integer;
    return {static_cast<uint16_t>(sign | integer)};
  }
  // Normal: rebias the exponent and round the mantissa from 23 to 10 bits, nearest even.
  const uint32_t rebased = magnitude - (112u << 23);
  const uint32_t rounding = 0xfffu + ((rebased >> 13) & 1u);
  return {static_cast<uint16_t>(sign | ((rebased + rounding) >> 13))};
}

enum class ElementType { kFloat32, kFloat16, kBFloat16 };

// Calls fn(T{}) with T the storage type that `type` names (float, Float16 or BFloat16).
template <typename Fn>
void dispatch_element_type(ElementType type, Fn&& fn) {
  switch (type) {
    case ElementType::kFloat32: fn(float{}); break;
    case ElementType::kFloat16: fn(Float16{}); break;
    case ElementType::kBFloat16: fn(BFloat16{}); break;
  }
}

}  // namespace jax_flash::cpu
