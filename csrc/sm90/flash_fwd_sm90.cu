// Dispatch of the Hopper forward: dtype x compiled head-dim tile (head_dim_tiles.h) x (masked, sequence length) ->
// a tuned configuration.
#include "sm90/flash_fwd_sm90.h"

#include <cstdint>
#include <limits>

#include "sm90/flash_fwd_launch.h"
#include "sm90/head_dim_tiles.h"
#include "sm90/tile_configs.h"

namespace jax_flash::sm90 {
namespace {

// Head dims are padded (with TMA zero fill) to whole 16-byte rows.
constexpr int64_t kHeadDimGranularity = 8;
// TMA global strides must stay below 2^40 bytes; sequence and head counts are int32 in the descriptors.
constexpr int64_t kMaxTmaStrideBytes = int64_t(1) << 40;
constexpr int64_t kMaxInt32 = std::numeric_limits<int32_t>::max();

template <class Element, int kTile>
cudaError_t launch_tile(const AttentionParams& p, const void* q, const void* k, const void* v, void* o, float* lse,
                        int* tile_counter, int num_sms, cudaStream_t stream) {
  return with_tuned_config<Element, kTile>(p, has_window(p), [&](auto traits) {
    return launch_flash_fwd<decltype(traits)>(p, q, k, v, o, lse, tile_counter, num_sms, stream);
  });
}

template <class Element>
cudaError_t launch_dtype(const AttentionParams& p, const void* q, const void* k, const void* v, void* o, float* lse,
                         int* tile_counter, int num_sms, cudaStream_t stream) {
  switch (compiled_head_dim_tile(p.head_dim)) {
#if JAX_FLASH_SM90_TILE_64
    case 64:
      return launch_tile<Element, 64>(p, q, k, v, o, lse, tile_counter, num_sms, stream);
#endif
#if JAX_FLASH_SM90_TILE_128
    case 128:
      return launch_tile<Element, 128>(p, q, k, v, o, lse, tile_counter, num_sms, stream);
#endif
#if JAX_FLASH_SM90_TILE_256
    case 256:
      return launch_tile<Element, 256>(p, q, k, v, o, lse, tile_counter, num_sms, stream);
#endif
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

bool flash_fwd_sm90_supports(const AttentionParams& p, DType dtype) {
  if (dtype != DType::kFloat16 && dtype != DType::kBFloat16) return false;
  if (p.head_dim <= 0 || p.head_dim % kHeadDimGranularity != 0 || compiled_head_dim_tile(p.head_dim) == 0) return false;
  if (p.heads_k <= 0 || p.heads_q % p.heads_k != 0) return false;
  // The softmax keeps raw scores and a running max, which needs a positive exponent scale.
  if (!(p.softmax_scale > 0.f) || !(p.softcap >= 0.f)) return false;
  if (p.batch < 0 || p.seqlen_q < 0 || p.seqlen_k < 0) return false;
  if (p.seqlen_q > kMaxInt32 || p.seqlen_k > kMaxInt32 || p.heads_q > kMaxInt32 || p.batch > kMaxInt32) return false;
  const int64_t element_bytes = 2;
  if (p.seqlen_q * p.q_row_stride() * element_bytes >= kMaxTmaStrideBytes ||
      p.seqlen_k * p.kv_row_stride() * element_bytes >= kMaxTmaStrideBytes)
    return false;
  // Tile indices are int32 (the smallest query tile has 128 rows).
  constexpr int64_t kSmallestBlockM = 128;
  return (p.seqlen_q + kSmallestBlockM - 1) / kSmallestBlockM * p.heads_q * p.batch <= kMaxInt32;
}

size_t flash_fwd_sm90_workspace_bytes(const AttentionParams&) {
  // One int tile counter, padded to a 16-byte slot.
  constexpr size_t kCounterSlotBytes = 16;
  return kCounterSlotBytes;
}

cudaError_t run_flash_fwd_sm90(const AttentionParams& p, DType dtype, const void* q, const void* k, const void* v,
                               void* o, float* lse, void* workspace, int num_sms, cudaStream_t stream,
                               bool dynamic_schedule) {
  if (!flash_fwd_sm90_supports(p, dtype) || num_sms <= 0) return cudaErrorInvalidValue;
  const bool dynamic = has_window(p) || dynamic_schedule;
  if (dynamic && workspace == nullptr) return cudaErrorInvalidValue;
  int* tile_counter = dynamic ? static_cast<int*>(workspace) : nullptr;
  if (dtype == DType::kBFloat16)
    return launch_dtype<cutlass::bfloat16_t>(p, q, k, v, o, lse, tile_counter, num_sms, stream);
  return launch_dtype<cutlass::half_t>(p, q, k, v, o, lse, tile_counter, num_sms, stream);
}

}  // namespace jax_flash::sm90
