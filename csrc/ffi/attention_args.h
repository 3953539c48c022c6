// Decoding and checking the buffers and attributes of the jax_flash custom calls, for every platform's handlers.
// The Python layer validates arguments at trace time with friendlier messages; these checks keep a handler safe
// when it is called some other way.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "common/attention_params.h"
#include "xla/ffi/api/ffi.h"

namespace jax_flash::ffi_args {

namespace ffi = xla::ffi;

// Attributes every jax_flash custom call carries.
struct MaskAttrs {
  float softmax_scale;
  bool causal;
  int64_t window_left;
  int64_t window_right;
  float softcap;
  int64_t diagonal_offset;
  // Backward only: add dq's float32 partial sums in a fixed order (bitwise reproducible gradients).
  bool deterministic;
  // Streaming multiprocessors a persistent GPU kernel leaves idle, so that a collective running beside it (ring
  // attention's K/V transfer) gets SMs instead of waiting for the kernel to end. Ignored on the CPU.
  int64_t sm_margin;
  // Persistent GPU kernels take tiles from an atomic counter instead of a fixed stride, so that CTAs that start late
  // (SMs held by a collective running beside them) do not hold back the kernel's end. Ignored on the CPU.
  bool dynamic_schedule;
};

template <typename Buffer>
std::string dims_string(const Buffer& b) {
  std::string s = "[";
  const auto dims = b.dimensions();
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

inline ffi::Error invalid(const std::string& what) { return ffi::Error::InvalidArgument("jax_flash: " + what); }

// Reads q [B, Sq, Hq, D], k and v [B, Sk, Hk, D] and the attributes into `params`.
inline ffi::Error make_params(const ffi::AnyBuffer& q, const ffi::AnyBuffer& k, const ffi::AnyBuffer& v,
                              const MaskAttrs& attrs, AttentionParams& params) {
  if (q.dimensions().size() != 4 || k.dimensions().size() != 4 || v.dimensions().size() != 4)
    return invalid("q, k, v must have rank 4 ([B, S, H, D]); got q " + dims_string(q) + ", k " + dims_string(k) +
                   ", v " + dims_string(v));
  if (q.element_type() != k.element_type() || q.element_type() != v.element_type())
    return invalid("q, k and v must have the same dtype");
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  for (int i = 0; i < 4; ++i)
    if (kd[i] != vd[i]) return invalid("k " + dims_string(k) + " and v " + dims_string(v) + " must have one shape");
  if (qd[0] != kd[0] || qd[3] != kd[3])
    return invalid("q " + dims_string(q) + " and k " + dims_string(k) + " must agree in batch and head dim");
  if (kd[2] <= 0 || qd[2] % kd[2] != 0)
    return invalid("query heads (" + std::to_string(qd[2]) + ") must be a multiple of kv heads (" +
                   std::to_string(kd[2]) + ")");
  if (attrs.window_left < kUnbounded || attrs.window_right < kUnbounded)
    return invalid("window bounds must be >= -1");
  if (!(attrs.softcap >= 0.0f)) return invalid("softcap must be >= 0");
  if (attrs.sm_margin < 0) return invalid("sm_margin must be >= 0");
  params.batch = qd[0];
  params.seqlen_q = qd[1];
  params.heads_q = qd[2];
  params.head_dim = qd[3];
  params.seqlen_k = kd[1];
  params.heads_k = kd[2];
  params.softmax_scale = attrs.softmax_scale;
  params.softcap = attrs.softcap;
  params.window_left = attrs.window_left;
  params.window_right = attrs.causal ? 0 : attrs.window_right;
  params.diagonal_offset = attrs.diagonal_offset;
  return ffi::Error::Success();
}

// Checks that `buffer` has exactly `dims`; `name` is used in the message.
template <typename Buffer>
ffi::Error expect_dims(const Buffer& buffer, std::initializer_list<int64_t> dims, const char* name) {
  const auto got = buffer.dimensions();
  bool same = got.size() == dims.size();
  size_t i = 0;
  for (int64_t d : dims) same = same && got[i++] == d;
  if (!same) return invalid(std::string(name) + " has shape " + dims_string(buffer) + ", which does not fit q/k/v");
  return ffi::Error::Success();
}

template <typename Buffer>
ffi::Error expect_q_shape(const Buffer& b, const AttentionParams& p, const char* name) {
  return expect_dims(b, {p.batch, p.seqlen_q, p.heads_q, p.head_dim}, name);
}
template <typename Buffer>
ffi::Error expect_kv_shape(const Buffer& b, const AttentionParams& p, const char* name) {
  return expect_dims(b, {p.batch, p.seqlen_k, p.heads_k, p.head_dim}, name);
}
template <typename Buffer>
ffi::Error expect_stats_shape(const Buffer& b, const AttentionParams& p, const char* name) {
  return expect_dims(b, {p.batch, p.heads_q, p.seqlen_q}, name);
}

// Every platform's forward handler: q, k, v -> o (q's shape and dtype), lse [B, Hq, Sq].
inline ffi::Error make_forward_params(const ffi::AnyBuffer& q, const ffi::AnyBuffer& k, const ffi::AnyBuffer& v,
                                      const ffi::AnyBuffer& o, const ffi::Buffer<ffi::F32>& lse,
                                      const MaskAttrs& attrs, AttentionParams& p) {
  if (auto err = make_params(q, k, v, attrs, p); err.failure()) return err;
  if (auto err = expect_q_shape(o, p, "o"); err.failure()) return err;
  if (auto err = expect_stats_shape(lse, p, "lse"); err.failure()) return err;
  if (o.element_type() != q.element_type()) return invalid("o must have q's dtype");
  return ffi::Error::Success();
}

// Every platform's backward handler: (dout, q, k, v, o, lse, dlse) -> dq, dk, dv and the float32 workspaces
// dq_accum (q's shape) and softmax_d [B, Hq, Sq].
inline ffi::Error make_backward_params(const ffi::AnyBuffer& dout, const ffi::AnyBuffer& q, const ffi::AnyBuffer& k,
                                       const ffi::AnyBuffer& v, const ffi::AnyBuffer& o,
                                       const ffi::Buffer<ffi::F32>& lse, const ffi::Buffer<ffi::F32>& dlse,
                                       const ffi::AnyBuffer& dq, const ffi::AnyBuffer& dk, const ffi::AnyBuffer& dv,
                                       const ffi::Buffer<ffi::F32>& dq_accum, const ffi::Buffer<ffi::F32>& softmax_d,
                                       const ffi::Buffer<ffi::S32>& dq_semaphore, const MaskAttrs& attrs,
                                       AttentionParams& p) {
  if (auto err = make_params(q, k, v, attrs, p); err.failure()) return err;
  for (auto [buffer, name] : {std::pair<const ffi::AnyBuffer*, const char*>{&dout, "dout"}, {&o, "o"}, {&dq, "dq"}})
    if (auto err = expect_q_shape(*buffer, p, name); err.failure()) return err;
  for (auto [buffer, name] : {std::pair<const ffi::AnyBuffer*, const char*>{&dk, "dk"}, {&dv, "dv"}})
    if (auto err = expect_kv_shape(*buffer, p, name); err.failure()) return err;
  if (auto err = expect_stats_shape(lse, p, "lse"); err.failure()) return err;
  if (auto err = expect_stats_shape(dlse, p, "dlse"); err.failure()) return err;
  if (auto err = expect_q_shape(dq_accum, p, "dq_accum"); err.failure()) return err;
  if (auto err = expect_stats_shape(softmax_d, p, "softmax_d"); err.failure()) return err;
  if (auto err = expect_stats_shape(dq_semaphore, p, "dq_semaphore"); err.failure()) return err;
  for (const ffi::AnyBuffer* buffer : {&dout, &o, &dq, &dk, &dv})
    if (buffer->element_type() != q.element_type()) return invalid("dout, o, dq, dk and dv must have q's dtype");
  return ffi::Error::Success();
}

}  // namespace jax_flash::ffi_args

// The attributes of every jax_flash custom call decode into one MaskAttrs: `.Attrs<MaskAttrs>()` in a binding.
XLA_FFI_REGISTER_STRUCT_ATTR_DECODING(jax_flash::ffi_args::MaskAttrs,
                                      xla::ffi::StructMember<float>("softmax_scale"),
                                      xla::ffi::StructMember<bool>("causal"),
                                      xla::ffi::StructMember<int64_t>("window_left"),
                                      xla::ffi::StructMember<int64_t>("window_right"),
                                      xla::ffi::StructMember<float>("softcap"),
                                      xla::ffi::StructMember<int64_t>("diagonal_offset"),
                                      xla::ffi::StructMember<bool>("deterministic"),
                                      xla::ffi::StructMember<int64_t>("sm_margin"),
                                      xla::ffi::StructMember<bool>("dynamic_schedule"));
