#include "flash_fwd_sm90_ablation.h"

#include "sm90/flash_fwd_launch_template.h"
#include "sm90/tile_configs.h"

namespace {

using jax_flash::AttentionParams;
using jax_flash::sm90::FwdKernelTraits;
using jax_flash::sm90::Hdim128Keys128;
using jax_flash::sm90::Hdim128Keys176;
using jax_flash::sm90::Hdim64Rows128;
using jax_flash::sm90::Hdim64Rows192;

template <bool kPingPong, bool kIntraWarpgroupOverlap>
using Variant = FwdKernelTraits<cutlass::bfloat16_t, 128, 128, 176, kPingPong, kIntraWarpgroupOverlap>;
static_assert(std::is_same_v<Variant<true, true>, Hdim128Keys176<cutlass::bfloat16_t>>,
              "the ablation's full variant is the tuned configuration");

template <class Traits>
cudaError_t launch(const AttentionParams& p, const void* q, const void* k, const void* v, void* o, float* lse,
                   int num_sms) {
  return jax_flash::sm90::launch_flash_fwd<Traits>(p, q, k, v, o, lse, nullptr, num_sms, nullptr);
}

template <class Traits>
cudaError_t launch_tile(const AttentionParams& p, const void* q, const void* k, const void* v, void* o, float* lse,
                        int* tile_counter, int num_sms) {
  // The library's schedule: dynamic (the counter) only for masked problems.
  int* counter = jax_flash::sm90::has_window(p) ? tile_counter : nullptr;
  return jax_flash::sm90::launch_flash_fwd<Traits>(p, q, k, v, o, lse, counter, num_sms, nullptr);
}

}  // namespace

// The tuned configurations are instantiated with the library (flash_fwd_sm90_hdim*_bf16.cu).
extern template cudaError_t jax_flash::sm90::launch_flash_fwd<Hdim64Rows192<cutlass::bfloat16_t>>(
    const AttentionParams&, const void*, const void*, const void*, void*, float*, int*, int, cudaStream_t);
extern template cudaError_t jax_flash::sm90::launch_flash_fwd<Hdim64Rows128<cutlass::bfloat16_t>>(
    const AttentionParams&, const void*, const void*, const void*, void*, float*, int*, int, cudaStream_t);
extern template cudaError_t jax_flash::sm90::launch_flash_fwd<Hdim128Keys128<cutlass::bfloat16_t>>(
    const AttentionParams&, const void*, const void*, const void*, void*, float*, int*, int, cudaStream_t);

std::vector<TileVariant> tile_variants() {
  return {
      {"64: 192x128", 64, launch_tile<Hdim64Rows192<cutlass::bfloat16_t>>},
      {"64: 128x128", 64, launch_tile<Hdim64Rows128<cutlass::bfloat16_t>>},
      {"128: 128x176", 128, launch_tile<Hdim128Keys176<cutlass::bfloat16_t>>},
      {"128: 128x128", 128, launch_tile<Hdim128Keys128<cutlass::bfloat16_t>>},
  };
}

// The full variant is instantiated with the library (flash_fwd_sm90_hdim128_bf16.cu).
extern template cudaError_t jax_flash::sm90::launch_flash_fwd<Variant<true, true>>(
    const AttentionParams&, const void*, const void*, const void*, void*, float*, int*, int, cudaStream_t);

std::vector<AblationVariant> ablation_variants() {
  return {
      {"ping-pong + intra-warpgroup overlap", launch<Variant<true, true>>},
      {"intra-warpgroup overlap only", launch<Variant<false, true>>},
      {"ping-pong only", launch<Variant<true, false>>},
      {"neither", launch<Variant<false, false>>},
  };
}
