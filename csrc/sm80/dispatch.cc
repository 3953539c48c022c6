#include "sm80/dispatch.h"

#include <iterator>

#ifndef JAX_FLASH_HEAD_DIMS_LIST
#error "JAX_FLASH_HEAD_DIMS_LIST (the instantiated head dims, comma-separated) must be defined by the build"
#endif

namespace jax_flash::sm80 {
namespace {

template <ElementKind kKind, int... kHeadDims>
constexpr KernelInstance kInstances[] = {{kHeadDims, &run_forward<kHeadDims, kKind>, &run_backward<kHeadDims, kKind>,
                                          &forward_smem_bytes<kHeadDims, kKind>,
                                          &backward_smem_bytes<kHeadDims, kKind>}...};

template <ElementKind kKind>
const KernelInstance* smallest_fitting(int64_t head_dim) {
  const KernelInstance* best = nullptr;
  for (const KernelInstance& instance : kInstances<kKind, JAX_FLASH_HEAD_DIMS_LIST>)
    if (instance.head_dim >= head_dim && (best == nullptr || instance.head_dim < best->head_dim)) best = &instance;
  return best;
}

}  // namespace

const KernelInstance* find_instance(int64_t head_dim, ElementKind kind) {
  return kind == ElementKind::kFloat16 ? smallest_fitting<ElementKind::kFloat16>(head_dim)
                                       : smallest_fitting<ElementKind::kBFloat16>(head_dim);
}

std::string instantiated_head_dims() {
  std::string dims;
  for (int d : {JAX_FLASH_HEAD_DIMS_LIST}) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
  return dims;
}

}  // namespace jax_flash::sm80
