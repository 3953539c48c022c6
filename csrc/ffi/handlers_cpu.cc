// Typed XLA FFI handlers for the CPU platform: decode and check the buffers, then run the CPU kernels on XLA's
// intra-op thread pool (or, where XLA provides none, on threads of our own).
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "cpu/attention_cpu.h"
#include "ffi/attention_args.h"
#include "ffi/handlers.h"
#include "xla/ffi/api/ffi.h"

namespace jax_flash {
namespace {

namespace ffi = xla::ffi;
using ffi_args::MaskAttrs;

// Work shared by the calling thread and helper threads: each claims task indices from `next` until none is left.
// The caller waits for the tasks to finish, not for the helpers to start, so a busy pool never blocks it; a helper
// that starts late finds nothing to do and only touches this shared state.
struct SharedWork {
  std::function<void(int64_t)> task;
  int64_t count;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mutex;
  std::condition_variable all_done;

  void drain() {
    int64_t finished = 0;
    for (int64_t i = next.fetch_add(1); i < count; i = next.fetch_add(1)) {
      task(i);
      ++finished;
    }
    if (finished > 0 && done.fetch_add(finished) + finished == count) {
      std::lock_guard<std::mutex> lock(mutex);
      all_done.notify_all();
    }
  }
};

cpu::ParallelFor make_parallel_for(ffi::ThreadPool& pool) {
  return [&pool](int64_t count, const std::function<void(int64_t)>& task) {
    if (count <= 0) return;
    auto work = std::make_shared<SharedWork>();
    work->task = task;
    work->count = count;
    const int64_t pool_threads = pool.num_threads();
    const int64_t helpers = std::min<int64_t>(
        count - 1, pool_threads > 0 ? pool_threads : std::max(1u, std::thread::hardware_concurrency()) - 1);
    std::vector<std::thread> own_threads;
    for (int64_t i = 0; i < helpers; ++i) {
      if (pool_threads > 0)
        pool.Schedule([work] { work->drain(); });
      else
        own_threads.emplace_back([work] { work->drain(); });
    }
    work->drain();
    std::unique_lock<std::mutex> lock(work->mutex);
    work->all_done.wait(lock, [&] { return work->done.load() == count; });
    lock.unlock();
    for (auto& t : own_threads) t.join();
  };
}

ffi::ErrorOr<cpu::ElementType> cpu_element_type(const ffi::AnyBuffer& buffer) {
  switch (buffer.element_type()) {
    case ffi::DataType::F32: return cpu::ElementType::kFloat32;
    case ffi::DataType::F16: return cpu::ElementType::kFloat16;
    case ffi::DataType::BF16: return cpu::ElementType::kBFloat16;
    default: return ffi_args::invalid("the CPU kernels take float32, float16 or bfloat16");
  }
}

// The custom calls have one signature on every platform (so that partitioning and batching rules need not know the
// platform): the forward's int32 workspace serves the CUDA handler's persistent scheduler and is not written here;
// of the backward's two float32 workspaces the CPU kernels use softmax_d for delta and leave dq_accum unwritten.
ffi::Error forward_cpu(ffi::ThreadPool pool, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                       ffi::Result<ffi::AnyBuffer> o, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                       ffi::Result<ffi::Buffer<ffi::S32>> /*workspace*/, MaskAttrs attrs) {
  AttentionParams p;
  if (auto err = ffi_args::make_forward_params(q, k, v, *o, *lse, attrs, p); err.failure()) return err;
  const auto type = cpu_element_type(q);
  if (type.has_error()) return type.error();
  cpu::attention_forward(type.value(), p, q.untyped_data(), k.untyped_data(), v.untyped_data(), o->untyped_data(),
                         lse->typed_data(), make_parallel_for(pool));
  return ffi::Error::Success();
}

ffi::Error backward_cpu(ffi::ThreadPool pool, ffi::AnyBuffer dout, ffi::AnyBuffer q, ffi::AnyBuffer k,
                        ffi::AnyBuffer v, ffi::AnyBuffer o, ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dlse,
                        ffi::Result<ffi::AnyBuffer> dq, ffi::Result<ffi::AnyBuffer> dk,
                        ffi::Result<ffi::AnyBuffer> dv, ffi::Result<ffi::Buffer<ffi::F32>> dq_accum,
                        ffi::Result<ffi::Buffer<ffi::F32>> softmax_d,
                        ffi::Result<ffi::Buffer<ffi::S32>> dq_semaphore, MaskAttrs attrs) {
  // The CPU backward is deterministic either way (no atomics); dq_semaphore is the CUDA kernels' workspace.
  AttentionParams p;
  if (auto err = ffi_args::make_backward_params(dout, q, k, v, o, lse, dlse, *dq, *dk, *dv, *dq_accum, *softmax_d,
                                                *dq_semaphore, attrs, p);
      err.failure())
    return err;
  const auto type = cpu_element_type(q);
  if (type.has_error()) return type.error();
  cpu::attention_backward(type.value(), p, dout.untyped_data(), q.untyped_data(), k.untyped_data(),
                          v.untyped_data(), o.untyped_data(), lse.typed_data(), dlse.typed_data(),
                          dq->untyped_data(), dk->untyped_data(), dv->untyped_data(), softmax_d->typed_data(),
                          make_parallel_for(pool));
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jax_flash

XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_flash_fwd_cpu, jax_flash::forward_cpu,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::AnyBuffer>()                // q
                                  .Arg<xla::ffi::AnyBuffer>()                // k
                                  .Arg<xla::ffi::AnyBuffer>()                // v
                                  .Ret<xla::ffi::AnyBuffer>()                // o
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()    // lse
                                  .Ret<xla::ffi::Buffer<xla::ffi::S32>>()    // workspace (CUDA only)
                                  .Attrs<jax_flash::ffi_args::MaskAttrs>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_flash_bwd_cpu, jax_flash::backward_cpu,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
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
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()    // dq_accum (CUDA only)
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()    // softmax_d (delta)
                                  .Ret<xla::ffi::Buffer<xla::ffi::S32>>()    // dq_semaphore (CUDA only)
                                  .Attrs<jax_flash::ffi_args::MaskAttrs>());
