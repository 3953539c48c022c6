// C[M, N] += A[M, K] · B[K, N] on small float32 tiles (row-major, leading dimensions in elements), the one matrix
// product the CPU kernels are built from. A register-blocked micro-kernel keeps kRows x kCols of C in vector
// registers (12 AVX2 registers) while it streams K; N must be a multiple of kCols (callers pad tiles with zeros).
#pragma once

#include <cstdint>
#include <cstring>

namespace jax_flash::cpu {

constexpr int64_t kGemmCols = 16;  // columns of C per micro-kernel step: two 8-wide AVX2 vectors
constexpr int64_t kGemmRows = 6;   // rows of C per micro-kernel step

typedef float Vec16 __attribute__((vector_size(kGemmCols * sizeof(float))));

inline Vec16 load_vec(const float* p) {
  Vec16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store_vec(float* p, Vec16 v) { std::memcpy(p, &v, sizeof v); }

template <int64_t Rows>
inline void gemm_micro_kernel(int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                              int64_t ldc) {
  Vec16 acc[Rows];
#pragma GCC unroll 8
  for (int64_t r = 0; r < Rows; ++r) acc[r] = load_vec(C + r * ldc);
  for (int64_t k = 0; k < K; ++k) {
    const Vec16 b = load_vec(B + k * ldb);
#pragma GCC unroll 8
    for (int64_t r = 0; r < Rows; ++r) acc[r] += A[r * lda + k] * b;
  }
#pragma GCC unroll 8
  for (int64_t r = 0; r < Rows; ++r) store_vec(C + r * ldc, acc[r]);
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
