// C[M, N] += A[M, K] · B[K, N] on small float32 tiles (row-major, leading dimensions in elements), the one matrix
// product the CPU kernels are built from. A register-blocked micro-kernel keeps kGemmRows x kGemmCols of C in
// vector registers while it streams K; N must be a multiple of kGemmCols (callers pad tiles with zeros).
#pragma once

#include <cstdint>
#include <cstring>

namespace jax_flash::cpu {

constexpr int64_t kVecWidth = 8;                 // floats per AVX2 register
constexpr int64_t kVecsPerRow = 2;               // vectors of C per row in one micro-kernel step
constexpr int64_t kGemmCols = kVecWidth * kVecsPerRow;  // columns of C per micro-kernel step
constexpr int64_t kGemmRows = 6;                 // rows of C per micro-kernel step: 12 accumulator registers

typedef float Vec __attribute__((vector_size(kVecWidth * sizeof(float))));

inline Vec load_vec(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store_vec(float* p, Vec v) { std::memcpy(p, &v, sizeof v); }

template <int64_t Rows>
inline void gemm_micro_kernel(int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                              int64_t ldc) {
  // Native-width vectors indexed only by unrolled constants, so the compiler keeps them all in registers.
  Vec acc[Rows][kVecsPerRow];
#pragma GCC unroll 8
  for (int64_t r = 0; r < Rows; ++r)
#pragma GCC unroll 2
    for (int64_t v = 0; v < kVecsPerRow; ++v) acc[r][v] = load_vec(C + r * ldc + v * kVecWidth);
  for (int64_t k = 0; k < K; ++k) {
    Vec b[kVecsPerRow];
#pragma GCC unroll 2
    for (int64_t v = 0; v < kVecsPerRow; ++v) b[v] = load_vec(B + k * ldb + v * kVecWidth);
#pragma GCC unroll 8
    for (int64_t r = 0; r < Rows; ++r) {
      const float a = A[r * lda + k];
#pragma GCC unroll 2
      for (int64_t v = 0; v < kVecsPerRow; ++v) acc[r][v] += a * b[v];
    }
  }
#pragma GCC unroll 8
  for (int64_t r = 0; r < Rows; ++r)
#pragma GCC unroll 2
    for (int64_t v = 0; v < kVecsPerRow; ++v) store_vec(C + r * ldc + v * kVecWidth, acc[r][v]);
}

inline void gemm_accumulate(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                            int64_t ldb, float* C, int64_t ldc) {
  for (int64_t j = 0; j < N; j += kGemmCols) {
    int64_t i = 0;
    for (; i + kGemmRows <= M; i += kGemmRows)
      gemm_micro_kernel<kGemmRows>(K, A + i * lda, lda, B + j, ldb, C + i * ldc + j, ldc);
    const float* a = A + i * lda;
    float* c = C + i * ldc + j;
    switch (M - i) {
      case 5: gemm_micro_kernel<5>(K, a, lda, B + j, ldb, c, ldc); break;
      case 4: gemm_micro_kernel<4>(K, a, lda, B + j, ldb, c, ldc); break;
      case 3: gemm_micro_kernel<3>(K, a, lda, B + j, ldb, c, ldc); break;
      case 2: gemm_micro_kernel<2>(K, a, lda, B + j, ldb, c, ldc); break;
      case 1: gemm_micro_kernel<1>(K, a, lda, B + j, ldb, c, ldc); break;
      default: break;
    }
  }
}

}  // namespace jax_flash::cpu
