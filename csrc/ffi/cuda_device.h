// Properties of the CUDA device a handler runs on, queried once per device and cached (handlers run on every call,
// inside CUDA graph capture too, and must not query the driver each time).
#pragma once

#include <cuda_runtime.h>

namespace jax_flash::cuda {

struct DeviceInfo {
  int device;                 // CUDA device ordinal
  int compute_capability;     // major * 10 + minor, e.g. 90
  int sm_count;               // streaming multiprocessors
  int max_smem_per_block;     // dynamic shared memory a block may opt in to, in bytes
};

// The calling thread's current device (XLA makes the executing device current before it calls a handler).
cudaError_t current_device_info(DeviceInfo& info);

}  // namespace jax_flash::cuda
