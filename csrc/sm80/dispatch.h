// Which sm80 kernel instance serves a head dim: the smallest instantiated head dim (JAX_FLASH_HEAD_DIMS at build
// time) that is at least as large; the kernels zero-pad the columns in between.
#pragma once

#include <cstdint>
#include <string>

#include "sm80/kernel_params.h"

namespace jax_flash::sm80 {

struct KernelInstance {
  int head_dim;
  cudaError_t (*forward)(const ForwardArgs&, const LaunchContext&);
  cudaError_t (*backward)(const BackwardArgs&, const LaunchContext&);
  int (*forward_smem_bytes)();
  int (*backward_smem_bytes)();
};

// nullptr when no instantiated head dim is >= head_dim.
const KernelInstance* find_instance(int64_t head_dim, ElementKind kind);

// The instantiated head dims, e.g. "64, 96, 128", for error messages.
std::string instantiated_head_dims();

}  // namespace jax_flash::sm80
