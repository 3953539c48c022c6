#include "ffi/cuda_device.h"

#include <mutex>

namespace jax_flash::cuda {
namespace {

constexpr int kMaxDevices = 64;

struct CachedDevice {
  std::once_flag once;
  cudaError_t status = cudaSuccess;
  DeviceInfo info{};
};

cudaError_t query(int device, DeviceInfo& info) {
  int major = 0, minor = 0;
  info.device = device;
  if (cudaError_t err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device)) return err;
  if (cudaError_t err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device)) return err;
  info.compute_capability = major * 10 + minor;
  if (cudaError_t err = cudaDeviceGetAttribute(&info.sm_count, cudaDevAttrMultiProcessorCount, device)) return err;
  return cudaDeviceGetAttribute(&info.max_smem_per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
}

}  // namespace

cudaError_t current_device_info(DeviceInfo& info) {
  static CachedDevice cache[kMaxDevices];
  int device = 0;
  if (cudaError_t err = cudaGetDevice(&device)) return err;
  if (device < 0 || device >= kMaxDevices) return cudaErrorInvalidDevice;
  CachedDevice& entry = cache[device];
  std::call_once(entry.once, [&] { entry.status = query(device, entry.info); });
  info = entry.info;
  return entry.status;
}

}  // namespace jax_flash::cuda
