// Moving tiles between the [B, S, H, D] tensors (any storage type) and float32 scratch tiles whose rows are padded
// to a multiple of kGemmCols with zeros, so tile_gemm.h can run on whole vectors.
#pragma once

#include <cstdint>

#include "cpu/element_types.h"
#include "cpu/tile_gemm.h"

namespace jax_flash::cpu {

inline int64_t padded_cols(int64_t cols) { return (cols + kGemmCols - 1) / kGemmCols * kGemmCols; }

// A view of one head of a [B, S, H, D] tensor: element (row, d) is at base[row * row_stride + d].
template <typename T>
struct HeadView {
  T* base;
  int64_t row_stride;
  T* row(int64_t r) const { return base + r * row_stride; }
};

template <typename T>
HeadView<T> head_view(T* tensor, int64_t seqlen, int64_t heads, int64_t head_dim, int64_t b, int64_t h) {
  return {tensor + ((b * seqlen) * heads + h) * head_dim, heads * head_dim};
}

// dst[r, d] = src[first + r, d] for r < rows, d < head_dim; zeros in the padding (rows up to tile_rows, cols to ld).
template <typename T>
void load_rows(HeadView<const T> src, int64_t first, int64_t rows, int64_t tile_rows, int64_t head_dim, float* dst,
               int64_t ld) {
  for (int64_t r = 0; r < tile_rows; ++r) {
    float* out = dst + r * ld;
    int64_t d = 0;
    if (r < rows) {
      const T* in = src.row(first + r);
      for (; d < head_dim; ++d) out[d] = to_float(in[d]);
    }
    for (; d < ld; ++d) out[d] = 0.0f;
  }
}

// dst[d, r] = src[first + r, d]: the transposed tile (head_dim padded to dst_rows, rows padded to ld) with zeros.
template <typename T>
void load_rows_transposed(HeadView<const T> src, int64_t first, int64_t rows, int64_t head_dim, int64_t dst_rows,
                          float* dst, int64_t ld) {
  for (int64_t d = 0; d < dst_rows; ++d)
    for (int64_t r = 0; r < ld; ++r) dst[d * ld + r] = 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    const T* in = src.row(first + r);
    for (int64_t d = 0; d < head_dim; ++d) dst[d * ld + r] = to_float(in[d]);
  }
}

// dst[first + r, d] = scale * src[r, d].
template <typename T>
void store_rows(const float* src, int64_t ld, int64_t rows, int64_t head_dim, float scale, HeadView<T> dst,
                int64_t first) {
  for (int64_t r = 0; r < rows; ++r) {
    T* out = dst.row(first + r);
    for (int64_t d = 0; d < head_dim; ++d) out[d] = from_float<T>(scale * src[r * ld + d]);
  }
}

// dst[c, r] = src[r, c] for a rows x cols tile.
inline void transpose_tile(const float* src, int64_t ld_src, int64_t rows, int64_t cols, float* dst, int64_t ld_dst) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ld_dst + r] = src[r * ld_src + c];
}

}  // namespace jax_flash::cpu
