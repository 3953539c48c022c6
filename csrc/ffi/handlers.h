// The FFI handler symbols that the extension module hands to jax.ffi.register_ffi_target.
#pragma once

#include "xla/ffi/api/api.h"

// CPU (always built).
XLA_FFI_DECLARE_HANDLER_SYMBOL(jax_flash_fwd_cpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(jax_flash_bwd_cpu);

#ifdef JAX_FLASH_WITH_CUDA
// CUDA (when built with nvcc). The backward call has two more results than the CPU one: its float32 workspaces.
XLA_FFI_DECLARE_HANDLER_SYMBOL(jax_flash_fwd_cuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(jax_flash_bwd_cuda);
#endif
