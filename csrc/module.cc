// The extension module: hands the FFI handlers to Python (as capsules for jax.ffi.register_ffi_target) and says
// what this build contains.
#include <nanobind/nanobind.h>

#include "ffi/handlers.h"

namespace nb = nanobind;

namespace {

template <typename Fn>
nb::capsule handler_capsule(Fn* fn) {
  return nb::capsule(reinterpret_cast<void*>(fn));
}

}  // namespace

NB_MODULE(_jax_flash_ext, m) {
  m.doc() = "jax_flash's compiled FFI handlers";

  // {target name: {platform: capsule}}
  m.def("registrations", []() {
    nb::dict targets;
    nb::dict fwd, bwd;
    fwd["cpu"] = handler_capsule(jax_flash_fwd_cpu);
    bwd["cpu"] = handler_capsule(jax_flash_bwd_cpu);
#ifdef JAX_FLASH_WITH_CUDA
    fwd["CUDA"] = handler_capsule(jax_flash_fwd_cuda);
    bwd["CUDA"] = handler_capsule(jax_flash_bwd_cuda);
#endif
    targets["jax_flash_fwd"] = fwd;
    targets["jax_flash_bwd"] = bwd;
    return targets;
  });

  // CUDA architectures and head dims the CUDA kernels were built for; empty when built without CUDA.
  m.def("cuda_archs", []() {
#ifdef JAX_FLASH_CUDA_ARCHS_STR
    return nb::str(JAX_FLASH_CUDA_ARCHS_STR);
#else
    return nb::str("");
#endif
  });
  m.def("cuda_head_dims", []() {
#ifdef JAX_FLASH_HEAD_DIMS_STR
    return nb::str(JAX_FLASH_HEAD_DIMS_STR);
#else
    return nb::str("");
#endif
  });
}
