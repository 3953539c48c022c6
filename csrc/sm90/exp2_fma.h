// 2^x computed on the FMA pipe instead of the MUFU (XU) unit, to take part of the softmax's exponentials off the
// XU pipe where it is as busy as the tensor cores (head dim 64: each score costs one EX2 and only 2 x 64 MACs).
// FlashAttention-3 does the same for its FP8 and head-dim-64 kernels.
//
// x = j + f with j = round(x) (an integer) and f in [-0.5, 0.5]; 2^f by a cubic, 2^j by adding j to the float's
// exponent bits. The cubic's relative error is below 1.1e-4 (a 16-bit P carries at best 2^-11 = 4.9e-4).
// x is clamped at -127 first: exp2(-inf) (a masked score) then comes out exactly 0 (j = -127, f = 0, 1.0 with
// its exponent lowered by 127), and anything between -127 and -126 a subnormal, like the MUFU's below 2^-126.
// Cost: 7 FMA-pipe instructions (FMNMX, 3 FADD, 3 FFMA) and one LEA, against one MUFU.EX2.
#pragma once

#include <cstdint>

namespace jax_flash::sm90 {

// 1.5 * 2^23: adding it rounds a float of magnitude below 2^22 to an integer, held in the low mantissa bits.
constexpr float kRoundMagic = 12582912.f;
constexpr float kExp2FmaMin = -127.f;
constexpr int kFloatMantissaBits = 23;
// 2^f ~ 1 + f (c1 + f (c2 + f c3)) on [-0.5, 0.5], fitted for minimal relative error with the constant term 1
// (so 2^0 is exact, which makes exp2(-inf) exactly 0 above).
constexpr float kExp2C1 = 0.6932829f;
constexpr float kExp2C2 = 0.24221098f;
constexpr float kExp2C3 = 0.05500893f;

__device__ __forceinline__ float exp2_fma(float x) {
  x = fmaxf(x, kExp2FmaMin);
  const float rounded = x + kRoundMagic;  // low mantissa bits: round(x), two's complement
  const float j = rounded - kRoundMagic;
  const float f = x - j;
  const float p = fmaf(fmaf(fmaf(kExp2C3, f, kExp2C2), f, kExp2C1), f, 1.f);
  // Adds round(x) to p's exponent field: the magic's own bits sit above bit 8 and shift out.
  return __int_as_float(int32_t(uint32_t(__float_as_int(rounded)) << kFloatMantissaBits) + __float_as_int(p));
}

}  // namespace jax_flash::sm90
