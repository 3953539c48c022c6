// Typed XLA FFI handlers for the CUDA platform: decode and check the buffers, pick the kernel instance for the
// device's compute capability, the dtype and the head dim, and launch on XLA's stream. They allocate nothing and
// never synchronise (the backward's workspaces are outputs of the call), so XLA may capture them in CUDA graphs.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>

#include "ffi/attention_args.h"
#include "ffi/cuda_device.h"
#include "ffi/handlers.h"
#include "sm80/dispatch.h"
#include "sm80/kernel_params.h"
#ifdef JAX_FLASH_WITH_SM90
#include "sm90/flash_bwd_sm90.h"
#include "sm90/flash_fwd_sm90.h"
#endif
#include "xla/ffi/api/ffi.h"

namespace jax_flash {
namespace {

namespace ffi = xla::ffi;
using ffi_args::MaskAttrs;

constexpr int kMinComputeCapability = 80;  // mma.sync bf16, cp.async, ldmatrix
constexpr int64_t kMaxGridDim = 65535;     // CUDA's limit on gridDim.y and gridDim.z (heads, batch)

ffi::ErrorOr<sm80::ElementKind> element_kind(const ffi::AnyBuffer& buffer) {
  switch (buffer.element_type()) {
    case ffi::DataType::F16: return sm80::ElementKind::kFloat16;
    case ffi::DataType::BF16: return sm80::ElementKind::kBFloat16;
    case ffi::DataType::F32:
      return ffi_args::invalid("float32 is not supported on GPUs (the kernels run on 16-bit tensor cores); "
                               "cast q, k and v to float16 or bfloat16");
    default: return ffi_args::invalid("the CUDA kernels take float16 or bfloat16");
  }
}

ffi::Error cuda_error(const char* what, cudaError_t err) {
  return ffi::Error::Internal(std::string("jax_flash: ") + what + ": " + cudaGetErrorString(err));
}

// Everything a launch needs besides its buffers: the device, the instance for (dtype, head dim), and the checks that
// it can run there.
struct Launch {
  sm80::LaunchContext context;
  const sm80::KernelInstance* instance;
};

ffi::ErrorOr<Launch> prepare_launch(cudaStream_t stream, const ffi::AnyBuffer& q, const AttentionParams& p,
                                    bool backward) {
  const auto kind = element_kind(q);
  if (kind.has_error()) return kind.error();
  cuda::DeviceInfo device;
  if (cudaError_t err = cuda::current_device_info(device)) return cuda_error("reading the device's properties", err);
  if (device.compute_capability < kMinComputeCapability)
    return ffi_args::invalid("the CUDA kernels need compute capability 8.0 or newer; device " +
                             std::to_string(device.device) + " has " + std::to_string(device.compute_capability / 10) +
                             "." + std::to_string(device.compute_capability % 10));
  const sm80::KernelInstance* instance = sm80::find_instance(p.head_dim, kind.value());
  if (instance == nullptr)
    return ffi_args::invalid("head dim " + std::to_string(p.head_dim) + " has no CUDA kernel in this build (built: " +
                             sm80::instantiated_head_dims() +
                             "); rebuild with JAX_FLASH_HEAD_DIMS including it or a larger one");
  const int smem = backward ? instance->backward_smem_bytes() : instance->forward_smem_bytes();
  if (smem > device.max_smem_per_block)
    return ffi_args::invalid("head dim " + std::to_string(instance->head_dim) + " needs " + std::to_string(smem) +
                             " bytes of shared memory per block; device " + std::to_string(device.device) +
                             " allows " + std::to_string(device.max_smem_per_block));
  if (p.batch > kMaxGridDim || p.heads_q > kMaxGridDim)
    return ffi_args::invalid("batch and heads must be at most " + std::to_string(kMaxGridDim) + " on GPUs");
  if (sm80::kMaxTileRows * p.q_row_stride() > std::numeric_limits<int32_t>::max())
    return ffi_args::invalid("heads x head_dim (" + std::to_string(p.q_row_stride()) + ") must be below " +
                             std::to_string(std::numeric_limits<int32_t>::max() / sm80::kMaxTileRows) + " on GPUs");
  return Launch{{stream, device.device, device.sm_count}, instance};
}

#ifdef JAX_FLASH_WITH_SM90
constexpr int kHopperComputeCapability = 90;  // wgmma, TMA and setmaxnreg (sm_90a kernels)

// The SMs a persistent kernel spreads over: all but `sm_margin`, and at least one.
int persistent_grid_sms(const cuda::DeviceInfo& device, int64_t sm_margin) {
  return static_cast<int>(std::max<int64_t>(1, device.sm_count - sm_margin));
}

// Runs the FlashAttention-3 forward when the device is a Hopper GPU and a kernel of this build covers the problem;
// `launched` says whether it did (else the caller runs the sm80 kernels).
ffi::Error try_forward_sm90(cudaStream_t stream, const ffi::AnyBuffer& q, const ffi::AnyBuffer& k,
                            const ffi::AnyBuffer& v, ffi::AnyBuffer& o, ffi::Buffer<ffi::F32>& lse,
                            ffi::Buffer<ffi::S32>& workspace, const AttentionParams& p, const MaskAttrs& attrs,
                            bool& launched) {
  launched = false;
  cuda::DeviceInfo device;
  if (cudaError_t err = cuda::current_device_info(device)) return cuda_error("reading the device's properties", err);
  if (device.compute_capability != kHopperComputeCapability) return ffi::Error::Success();
  const auto dtype = q.element_type() == ffi::DataType::BF16 ? sm90::DType::kBFloat16 : sm90::DType::kFloat16;
  if (!sm90::flash_fwd_sm90_supports(p, dtype)) return ffi::Error::Success();
  if (sm90::flash_fwd_sm90_workspace_bytes(p) > workspace.size_bytes())
    return ffi_args::invalid("the forward workspace is smaller than the Hopper kernel needs");
  if (cudaError_t err = sm90::run_flash_fwd_sm90(p, dtype, q.untyped_data(), k.untyped_data(), v.untyped_data(),
                                                 o.untyped_data(), lse.typed_data(), workspace.typed_data(),
                                                 persistent_grid_sms(device, attrs.sm_margin), stream,
                                                 attrs.dynamic_schedule))
    return cuda_error("launching the Hopper forward kernel", err);
  launched = true;
  return ffi::Error::Success();
}

// Runs the FlashAttention-3 backward when the device is a Hopper GPU and a kernel of this build covers the problem;
// `launched` says whether it did (else the caller runs the sm80 kernels).
ffi::Error try_backward_sm90(cudaStream_t stream, const sm90::BwdBuffers& buffers, ffi::DataType element_type,
                             const AttentionParams& p, bool& launched) {
  launched = false;
  cuda::DeviceInfo device;
  if (cudaError_t err = cuda::current_device_info(device)) return cuda_error("reading the device's properties", err);
  if (device.compute_capability != kHopperComputeCapability) return ffi::Error::Success();
  const auto dtype = element_type == ffi::DataType::BF16 ? sm90::DType::kBFloat16 : sm90::DType::kFloat16;
  if (!sm90::flash_bwd_sm90_supports(p, dtype)) return ffi::Error::Success();
  if (cudaError_t err = sm90::run_flash_bwd_sm90(p, dtype, buffers, device.sm_count, stream))
    return cuda_error("launching the Hopper backward kernels", err);
  launched = true;
  return ffi::Error::Success();
}
#endif

ffi::Error forward_cuda(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                        ffi::Result<ffi::AnyBuffer> o, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                        ffi::Result<ffi::Buffer<ffi::S32>> workspace, MaskAttrs attrs) {
  AttentionParams p;
  if (auto err = ffi_args::make_forward_params(q, k, v, *o, *lse, attrs, p); err.failure()) return err;
  const auto launch = prepare_launch(stream, q, p, /*backward=*/false);
  if (launch.has_error()) return launch.error();
#ifdef JAX_FLASH_WITH_SM90
  bool launched = false;
  if (auto err = try_forward_sm90(stream, q, k, v, *o, *lse, *workspace, p, attrs, launched);
      err.failure())
    return err;
  if (launched) return ffi::Error::Success();
#endif
  const sm80::ForwardArgs args{p, q.untyped_data(), k.untyped_data(), v.untyped_data(), o->untyped_data(),
                               lse->typed_data()};
  if (cudaError_t err = launch.value().instance->forward(args, launch.value().context))
    return cuda_error("launching the forward kernel", err);
  return ffi::Error::Success();
}

ffi::Error backward_cuda(cudaStream_t stream, ffi::AnyBuffer dout, ffi::AnyBuffer q, ffi::AnyBuffer k,
                         ffi::AnyBuffer v, ffi::AnyBuffer o, ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dlse,
                         ffi::Result<ffi::AnyBuffer> dq, ffi::Result<ffi::AnyBuffer> dk,
                         ffi::Result<ffi::AnyBuffer> dv, ffi::Result<ffi::Buffer<ffi::F32>> dq_accum,
                         ffi::Result<ffi::Buffer<ffi::F32>> softmax_d,
                         ffi::Result<ffi::Buffer<ffi::S32>> dq_semaphore, MaskAttrs attrs) {
  AttentionParams p;
  if (auto err = ffi_args::make_backward_params(dout, q, k, v, o, lse, dlse, *dq, *dk, *dv, *dq_accum, *softmax_d,
                                                *dq_semaphore, attrs, p);
      err.failure())
    return err;
  const auto launch = prepare_launch(stream, q, p, /*backward=*/true);
  if (launch.has_error()) return launch.error();
  // Deterministic mode orders the key blocks' dQ additions through these counters; else they add as they come.
  int* semaphore = attrs.deterministic ? dq_semaphore->typed_data() : nullptr;
#ifdef JAX_FLASH_WITH_SM90
  const sm90::BwdBuffers buffers{dout.untyped_data(), q.untyped_data(),  k.untyped_data(),
                                 v.untyped_data(),    o.untyped_data(),  lse.typed_data(),
                                 dlse.typed_data(),   dq->untyped_data(), dk->untyped_data(),
                                 dv->untyped_data(),  dq_accum->typed_data(), softmax_d->typed_data(),
                                 semaphore};
  bool launched = false;
  if (auto err = try_backward_sm90(stream, buffers, q.element_type(), p, launched); err.failure()) return err;
  if (launched) return ffi::Error::Success();
#endif
  const sm80::BackwardArgs args{p, dout.untyped_data(), q.untyped_data(), k.untyped_data(), v.untyped_data(),
                                o.untyped_data(), lse.typed_data(), dlse.typed_data(), dq->untyped_data(),
                                dk->untyped_data(), dv->untyped_data(), dq_accum->typed_data(),
                                softmax_d->typed_data(), semaphore};
  if (cudaError_t err = launch.value().instance->backward(args, launch.value().context))
    return cuda_error("launching the backward kernels", err);
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jax_flash

XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_flash_fwd_cuda, jax_flash::forward_cuda,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<xla::ffi::AnyBuffer>()                // q
                                  .Arg<xla::ffi::AnyBuffer>()                // k
                                  .Arg<xla::ffi::AnyBuffer>()                // v
                                  .Ret<xla::ffi::AnyBuffer>()                // o
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()    // lse
                                  .Ret<xla::ffi::Buffer<xla::ffi::S32>>()    // workspace (tile counter)
                                  .Attrs<jax_flash::ffi_args::MaskAttrs>(),
                              {xla::ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_flash_bwd_cuda, jax_flash::backward_cuda,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<xla::ffi::AnyBuffer>()                // dout
                                  .Arg<xla::ffi::AnyBuffer>()                // q
                                  .Arg<xla::ffi::AnyBuffer>()                // k
                                  .Arg<xla::ffi::AnyBuffer>()                // v
                                  .Arg<xla::ffi::AnyBuffer>()                // o
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()    // lse
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()    // dlse
                                  .Ret<xla::ffi::AnyBuffer>()                // dq
                                  .Ret<xla::ffi::AnyBuffer>()                // dk
                                  .Ret<xla::ffi::AnyBuffer>()                // dv
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()    // dq_accum (workspace)
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()    // softmax_d (workspace)
                                  .Ret<xla::ffi::Buffer<xla::ffi::S32>>()    // dq_semaphore (workspace)
                                  .Attrs<jax_flash::ffi_args::MaskAttrs>(),
                              {xla::ffi::Traits::kCmdBufferCompatible});
