// The FFI handler symbols that the extension module hands to jax.ffi.register_ffi_target.
#pragma once

#include "xla/ffi/api/api.h"

// CPU (always built).
XLA_FFI_DECLARE_HANDLER_SYMBOL(jax_flash_fwd_cpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(jax_flash_bwd_cpu);
