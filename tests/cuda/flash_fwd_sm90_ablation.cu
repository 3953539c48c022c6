#include "flash_fwd_sm90_ablation.h"

#include "sm90/flash_fwd_launch_template.h"
#include "sm90/tile_configs.h"

namespace {

using jax_flash::AttentionParams;
using jax_flash::sm90::FwdKernelTraits;
using jax_flash::sm90::TunedConfig;

template <bool kPingPong, bool kIntraWarpgroupOverlap>
using Variant = FwdKernelTraits<cutlass::bfloat16_t, 128, 128, 176, kPingPong, kIntraWarpgroupOverlap>;
static_assert(std::is_same_v<Variant<true, true>, TunedConfig<cutlass::bfloat16_t, 128, false>::Traits>,
              "the ablation's full variant is the tuned configuration");

template <class Traits>
cudaError_t launch(const AttentionParams& p, const void* q, const void* k, const void* v, void* o, float* lse,
                   int num_sms) {
  return jax_flash::sm90::launch_flash_fwd<Traits>(p, q, k, v, o, lse, nullptr, num_sms, nullptr);
}

}  // namespace

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
