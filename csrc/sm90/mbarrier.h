// mbarrier arrive and wait for handing over data that threads store or load with ordinary shared-memory accesses:
// the PTX operations CUTLASS's ClusterBarrier issues (mbarrier.arrive: release, mbarrier.try_wait: acquire, both at
// CTA scope) with a "memory" clobber added. CUTLASS's inline assembly has none, so the compiler may move ordinary
// loads and stores across it, which the barrier's hardware ordering cannot undo.
#pragma once

#include <cstdint>

#include <cute/arch/util.hpp>

namespace jax_flash::sm90 {

// try_wait's suspend-time hint (ns), as CUTLASS passes it: the thread may sleep this long before it re-checks.
constexpr uint32_t kTryWaitSuspendHintNs = 0x989680;

__device__ __forceinline__ void mbarrier_arrive(uint64_t* barrier) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(cute::cast_smem_ptr_to_uint(barrier)) : "memory");
}

// Arrives and returns the state of the phase it arrived on, for mbarrier_wait_phase: a thread that takes part in
// every phase of a barrier can wait without keeping a parity.
__device__ __forceinline__ uint64_t mbarrier_arrive_phase(uint64_t* barrier) {
  uint64_t state;
  asm volatile("mbarrier.arrive.shared::cta.b64 %0, [%1];"
               : "=l"(state)
               : "r"(cute::cast_smem_ptr_to_uint(barrier))
               : "memory");
  return state;
}

// Returns once the phase `state` (from mbarrier_arrive_phase on the same barrier) has completed.
__device__ __forceinline__ void mbarrier_wait_phase(uint64_t* barrier, uint64_t state) {
  asm volatile(
      "{\n\t"
      ".reg .pred done;\n\t"
      "WAIT:\n\t"
      "mbarrier.try_wait.shared::cta.b64 done, [%0], %1, %2;\n\t"
      "@!done bra WAIT;\n\t"
      "}" ::"r"(cute::cast_smem_ptr_to_uint(barrier)),
      "l"(state), "r"(kTryWaitSuspendHintNs)
      : "memory");
}

}  // namespace jax_flash::sm90
