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

// Returns once the barrier's phase of parity `parity` has completed.
__device__ __forceinline__ void mbarrier_wait(uint64_t* barrier, uint32_t parity) {
  asm volatile(
      "{\n\t"
      ".reg .pred done;\n\t"
      "WAIT:\n\t"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1, %2;\n\t"
      "@!done bra WAIT;\n\t"
      "}" ::"r"(cute::cast_smem_ptr_to_uint(barrier)),
      "r"(parity), "r"(kTryWaitSuspendHintNs)
      : "memory");
}

}  // namespace jax_flash::sm90
