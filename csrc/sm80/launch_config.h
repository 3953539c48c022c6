// Host-side helpers shared by the kernel launchers.
#pragma once

#include <cuda_runtime.h>

#include <mutex>

namespace jax_flash::sm80 {

constexpr int kMaxDevices = 64;

// Raises the kernel's dynamic shared-memory limit to `bytes`, once per device (the attribute belongs to the device's
// context); later calls return the first result without touching the driver.
template <auto kKernel>
cudaError_t allow_dynamic_smem(int bytes, int device) {
  if (device < 0 || device >= kMaxDevices) return cudaErrorInvalidDevice;
  static std::once_flag once[kMaxDevices];
  static cudaError_t result[kMaxDevices];
  std::call_once(once[device], [&] {
    result[device] = cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  });
  return result[device];
}

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace jax_flash::sm80
