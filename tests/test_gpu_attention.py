"""The CUDA kernels through the real custom calls, against the float64 NumPy reference.

Run on a machine with a CUDA GPU and a CUDA build of the package: `pytest -m gpu tests`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash
import reference_numpy as ref
from conftest import RTOL, assert_close, assert_lse_matches, random_qkv
from jax_flash import _ffi
from jax_flash._config import AttentionConfig

pytestmark = pytest.mark.gpu

DTYPES = (jnp.float16, jnp.bfloat16)
# A CPU-only build has none; the cases are still generated (and deselected, or failed by cuda_backend) so that
# collecting this module never breaks the CPU suite.
BUILT_HEAD_DIMS = tuple(jax_flash.build_info()["cuda_head_dims"]) or (128,)
# Gradients go through two more 16-bit roundings (P and dS) than the output.
GRAD_FACTOR = 2.0
# tanh.approx (relative error about 2^-11) perturbs softcapped scores a little more.
SOFTCAP_FACTOR = 2.0
LSE_ATOL = 2e-3


@pytest.fixture(scope="module", autouse=True)
def cuda_backend():
  if jax.default_backend() != "gpu" or not jax_flash.has_cuda():
    pytest.fail("GPU tests need a CUDA GPU as JAX's default backend and a build of jax_flash with CUDA kernels")


@dataclasses.dataclass(frozen=True)
class Case:
  batch: int
  seqlen_q: int
  seqlen_k: int
  heads_q: int
  heads_k: int
  head_dim: int
  causal: bool = False
  window: tuple[int, int] = (-1, -1)
  softcap: float = 0.0

  def __str__(self):
    mask = "causal" if self.causal else "full"
    if self.window != (-1, -1):
      mask += f"-window{self.window[0]}_{self.window[1]}"
    cap = f"-cap{self.softcap:g}" if self.softcap else ""
    return (f"b{self.batch}-sq{self.seqlen_q}-sk{self.seqlen_k}-h{self.heads_q}_{self.heads_k}-d{self.head_dim}-"
            f"{mask}{cap}")

  @property
  def kwargs(self):
    return dict(causal=self.causal, window_size=self.window, softcap=self.softcap)


def _routed_head_dims() -> tuple[int, ...]:
  """Head dims that are not instantiated and run on the next larger instance (zero-padded columns)."""
  return tuple(d for d in (8, 40, 72, 136, 200) if d <= max(BUILT_HEAD_DIMS) and d not in BUILT_HEAD_DIMS)


def _forward_cases() -> list[Case]:
  d = BUILT_HEAD_DIMS[0]
  cases = []
  for hd in BUILT_HEAD_DIMS:
    cases += [Case(2, 129, 129, 4, 4, hd), Case(1, 200, 329, 4, 2, hd, causal=True)]
  cases += [Case(1, 77, 77, 2, 1, hd, causal=True) for hd in _routed_head_dims()]
  cases += [
      # lengths 1, 7, 1000+; Sq != Sk both ways (causal rows with no key when Sq > Sk)
      Case(1, 1, 1, 2, 2, d),
      Case(3, 7, 7, 2, 1, d, causal=True),
      Case(1, 1, 1030, 2, 2, d),
      Case(1, 1030, 1, 2, 2, d),
      Case(1, 1030, 1030, 2, 2, d, causal=True),
      Case(1, 1030, 129, 2, 1, d, causal=True),
      Case(1, 129, 1030, 2, 2, d, causal=True),
      # GQA ratios 1, 2, 8 (8 = MQA here)
      Case(2, 255, 300, 8, 8, d, causal=True),
      Case(2, 255, 300, 8, 4, d),
      Case(2, 255, 300, 8, 1, d, causal=True),
      # windows: both sides, one side, causal + left, rows with no key (left = right = 0 with Sq > Sk)
      Case(1, 500, 500, 2, 2, d, window=(32, 16)),
      Case(1, 300, 700, 2, 1, d, window=(-1, 8)),
      Case(1, 700, 300, 2, 2, d, window=(100, -1)),
      Case(1, 520, 520, 4, 2, d, causal=True, window=(64, 0)),
      Case(1, 300, 100, 2, 2, d, window=(0, 0)),
      # softcap, alone and with masks
      Case(2, 300, 300, 4, 2, d, softcap=30.0),
      Case(1, 333, 444, 2, 2, d, causal=True, softcap=5.0),
  ]
  return cases


def _backward_cases() -> list[Case]:
  d = BUILT_HEAD_DIMS[0]
  cases = [Case(1, 150, 200, 4, 2, hd, causal=True) for hd in BUILT_HEAD_DIMS]
  cases += [Case(1, 77, 77, 2, 1, hd) for hd in _routed_head_dims()[:2]]
  cases += [
      Case(1, 1, 1, 2, 2, d),
      Case(2, 7, 7, 2, 1, d, causal=True),
      Case(1, 1030, 1030, 2, 2, d, causal=True),
      Case(1, 1030, 129, 2, 2, d, causal=True),
      Case(1, 129, 1030, 2, 1, d),
      Case(2, 255, 300, 8, 1, d, causal=True),
      Case(1, 500, 500, 2, 2, d, window=(32, 16)),
      Case(1, 300, 100, 2, 2, d, window=(0, 0)),
      Case(1, 300, 300, 4, 2, d, softcap=10.0),
  ]
  return cases


def _reference_inputs(q, k, v):
  return tuple(np.asarray(x.astype(jnp.float32), dtype=np.float64) for x in (q, k, v))


def _check_no_key_rows(case: Case, o, lse):
  """Rows that see no key: o exactly 0 and lse exactly -inf."""
  visible = ref.visible(case.seqlen_q, case.seqlen_k, case.causal, case.window)
  empty = ~visible.any(axis=1)
  if empty.any():
    assert np.all(np.asarray(o, dtype=np.float32)[:, empty] == 0.0), "rows with no visible key must have o = 0"
    assert np.all(np.isneginf(np.asarray(lse)[:, :, empty])), "rows with no visible key must have lse = -inf"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: jnp.dtype(t).name)
@pytest.mark.parametrize("case", _forward_cases(), ids=str)
def test_forward_matches_float64_reference(case, dtype, rng):
  q, k, v = random_qkv(rng, case.batch, case.seqlen_q, case.seqlen_k, case.heads_q, case.heads_k, case.head_dim,
                       dtype)
  o, lse = jax.jit(functools.partial(jax_flash.attention, return_lse=True, **case.kwargs))(q, k, v)
  o_ref, lse_ref = ref.forward(*_reference_inputs(q, k, v), **case.kwargs)
  assert o.dtype == dtype and lse.dtype == jnp.float32
  assert not np.any(np.isnan(np.asarray(o, dtype=np.float32))), "o has NaN"
  factor = SOFTCAP_FACTOR if case.softcap else 1.0
  assert_close(o, o_ref, dtype, "o", factor)
  assert_lse_matches(lse, lse_ref, atol=LSE_ATOL * factor)
  _check_no_key_rows(case, o, lse)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: jnp.dtype(t).name)
@pytest.mark.parametrize("case", _backward_cases(), ids=str)
def test_gradients_match_float64_reference(case, dtype, rng):
  q, k, v = random_qkv(rng, case.batch, case.seqlen_q, case.seqlen_k, case.heads_q, case.heads_k, case.head_dim,
                       dtype)
  dout = jnp.asarray(rng.standard_normal(q.shape, dtype=np.float32)).astype(dtype)
  dlse = jnp.asarray(rng.standard_normal((case.batch, case.heads_q, case.seqlen_q), dtype=np.float32))

  @jax.jit
  def grads(q, k, v, dout, dlse):
    _, vjp = jax.vjp(lambda q, k, v: jax_flash.attention(q, k, v, return_lse=True, **case.kwargs), q, k, v)
    return vjp((dout, dlse))

  dq, dk, dv = grads(q, k, v, dout, dlse)
  qf, kf, vf = _reference_inputs(q, k, v)
  dq_ref, dk_ref, dv_ref = ref.backward(qf, kf, vf, np.asarray(dout.astype(jnp.float32), np.float64),
                                        np.asarray(dlse, np.float64), **case.kwargs)
  factor = GRAD_FACTOR * (SOFTCAP_FACTOR if case.softcap else 1.0)
  for name, got, want in (("dq", dq, dq_ref), ("dk", dk, dk_ref), ("dv", dv, dv_ref)):
    assert got.dtype == dtype
    assert not np.any(np.isnan(np.asarray(got, dtype=np.float32))), f"{name} has NaN"
    assert_close(got, want, dtype, name, factor)


# --- every output element written -------------------------------------------------------------------------------


def _poisoned(shape, dtype):
  return jnp.full(shape, jnp.nan, dtype)


def _assert_no_copies(compiled_text: str):
  assert " copy(" not in compiled_text and "copy-start" not in compiled_text, (
      "XLA copies the custom call's result: the outputs would not land in the poisoned buffers")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: jnp.dtype(t).name)
def test_forward_writes_every_output_element(dtype, rng):
  """o and lse land in donated NaN-filled buffers; a NaN left over would be an element the kernel never wrote."""
  case = Case(2, 333, 259, 4, 2, BUILT_HEAD_DIMS[0], causal=True)
  q, k, v = random_qkv(rng, case.batch, case.seqlen_q, case.seqlen_k, case.heads_q, case.heads_k, case.head_dim,
                       dtype)
  config = AttentionConfig(softmax_scale=case.head_dim**-0.5, causal=True)

  @functools.partial(jax.jit, donate_argnums=(0, 1), keep_unused=True)
  def forward_into(o_init, lse_init, q, k, v):
    del o_init, lse_init  # donated: XLA reuses their buffers for the outputs of the same shape
    return _ffi.forward(q, k, v, config)

  o_init = _poisoned(q.shape, dtype)
  lse_init = _poisoned((case.batch, case.heads_q, case.seqlen_q), jnp.float32)
  pointers = {o_init.unsafe_buffer_pointer(), lse_init.unsafe_buffer_pointer()}
  _assert_no_copies(forward_into.lower(o_init, lse_init, q, k, v).compile().as_text())
  o, lse = forward_into(o_init, lse_init, q, k, v)
  assert {o.unsafe_buffer_pointer(), lse.unsafe_buffer_pointer()} == pointers, "outputs did not reuse the poison"
  assert not np.any(np.isnan(np.asarray(o, dtype=np.float32))), "o has unwritten (NaN) elements"
  assert not np.any(np.isnan(np.asarray(lse))), "lse has unwritten (NaN) elements"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: jnp.dtype(t).name)
def test_backward_writes_every_output_element(dtype, rng):
  """dq, dk, dv land in donated NaN-filled buffers; keys no query sees must still get dk = dv = 0."""
  case = Case(2, 200, 333, 4, 2, BUILT_HEAD_DIMS[0], window=(40, 0))
  q, k, v = random_qkv(rng, case.batch, case.seqlen_q, case.seqlen_k, case.heads_q, case.heads_k, case.head_dim,
                       dtype)
  config = AttentionConfig(softmax_scale=case.head_dim**-0.5, window_left=40, window_right=0)
  o, lse = jax.jit(lambda q, k, v: _ffi.forward(q, k, v, config))(q, k, v)
  dout = jnp.asarray(rng.standard_normal(q.shape, dtype=np.float32)).astype(dtype)
  dlse = jnp.zeros(lse.shape, jnp.float32)

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2), keep_unused=True)
  def backward_into(dq_init, dk_init, dv_init, *args):
    del dq_init, dk_init, dv_init
    return _ffi.backward(*args, config)

  inits = (_poisoned(q.shape, dtype), _poisoned(k.shape, dtype), _poisoned(v.shape, dtype))
  pointers = {x.unsafe_buffer_pointer() for x in inits}
  args = (dout, q, k, v, o, lse, dlse)
  _assert_no_copies(backward_into.lower(*inits, *args).compile().as_text())
  grads = backward_into(*inits, *args)
  assert {g.unsafe_buffer_pointer() for g in grads} == pointers, "outputs did not reuse the poison"
  for name, g in zip(("dq", "dk", "dv"), grads):
    assert not np.any(np.isnan(np.asarray(g, dtype=np.float32))), f"{name} has unwritten (NaN) elements"


@pytest.mark.parametrize("head_dim", BUILT_HEAD_DIMS)
@pytest.mark.parametrize("sm_margin", (0, 16))
def test_forward_with_dynamic_schedule_equals_static_schedule(head_dim, sm_margin, rng):
  """Ring attention's settings (tiles from a counter, SMs left free) change which CTA computes a tile, not its
  result: o and lse are bitwise those of the default schedule, and match the float64 reference."""
  case = Case(3, 1000, 777, 8, 2, head_dim)  # more tiles than SMs, partial last tiles, GQA
  q, k, v = random_qkv(rng, case.batch, case.seqlen_q, case.seqlen_k, case.heads_q, case.heads_k, case.head_dim,
                       jnp.bfloat16)
  static = AttentionConfig(softmax_scale=head_dim**-0.5)
  dynamic = dataclasses.replace(static, dynamic_schedule=True, sm_margin=sm_margin)
  o_static, lse_static = jax.jit(lambda q, k, v: _ffi.forward(q, k, v, static))(q, k, v)
  o, lse = jax.jit(lambda q, k, v: _ffi.forward(q, k, v, dynamic))(q, k, v)
  assert np.array_equal(np.asarray(o, np.float32), np.asarray(o_static, np.float32)), "o depends on the schedule"
  assert np.array_equal(np.asarray(lse), np.asarray(lse_static)), "lse depends on the schedule"
  o_ref, lse_ref = ref.forward(*_reference_inputs(q, k, v), **case.kwargs)
  assert_close(o, o_ref, jnp.bfloat16, "o")
  assert_lse_matches(lse, lse_ref, atol=LSE_ATOL)


# --- repeatability ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: jnp.dtype(t).name)
def test_repeated_runs_agree(dtype, rng):
  """Forward and dk/dv are bitwise reproducible; dq (float32 atomics in any order) agrees to rounding."""
  case = Case(2, 700, 900, 8, 2, BUILT_HEAD_DIMS[-1], causal=True)
  q, k, v = random_qkv(rng, case.batch, case.seqlen_q, case.seqlen_k, case.heads_q, case.heads_k, case.head_dim,
                       dtype)
  dout = jnp.asarray(rng.standard_normal(q.shape, dtype=np.float32)).astype(dtype)

  @jax.jit
  def run(q, k, v, dout):
    (o, lse), vjp = jax.vjp(lambda q, k, v: jax_flash.attention(q, k, v, causal=True, return_lse=True), q, k, v)
    return (o, lse) + vjp((dout, jnp.zeros_like(lse)))

  first = [np.asarray(x) for x in run(q, k, v, dout)]
  for _ in range(3):
    again = [np.asarray(x) for x in run(q, k, v, dout)]
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), first, again):
      if name == "dq":
        assert_close(b, a, dtype, "dq across runs", factor=0.1)
      else:
        assert np.array_equal(a, b, equal_nan=True), f"{name} differs between identical runs"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: jnp.dtype(t).name)
@pytest.mark.parametrize("head_dim", sorted({BUILT_HEAD_DIMS[0], BUILT_HEAD_DIMS[-1]}))
def test_deterministic_gradients_are_bitwise_identical_across_runs(dtype, head_dim, rng):
  """With deterministic=True the key blocks add into dq in a fixed order: every gradient is bitwise stable."""
  case = Case(2, 1000, 1100, 8, 2, head_dim, causal=True)
  q, k, v = random_qkv(rng, case.batch, case.seqlen_q, case.seqlen_k, case.heads_q, case.heads_k, case.head_dim,
                       dtype)
  dout = jnp.asarray(rng.standard_normal(q.shape, dtype=np.float32)).astype(dtype)

  @jax.jit
  def grads(q, k, v, dout):
    _, vjp = jax.vjp(lambda q, k, v: jax_flash.attention(q, k, v, causal=True, deterministic=True), q, k, v)
    return vjp(dout)

  first = [np.asarray(g) for g in grads(q, k, v, dout)]
  dq_ref, dk_ref, dv_ref = ref.backward(*_reference_inputs(q, k, v), np.asarray(dout.astype(jnp.float32), np.float64),
                                        np.zeros((case.batch, case.heads_q, case.seqlen_q)), causal=True)
  for name, got, want in zip(("dq", "dk", "dv"), first, (dq_ref, dk_ref, dv_ref)):
    assert_close(got, want, dtype, name, GRAD_FACTOR)
  for _ in range(5):
    for name, a, b in zip(("dq", "dk", "dv"), first, grads(q, k, v, dout)):
      assert np.array_equal(a, np.asarray(b)), f"{name} differs between identical deterministic runs"


# --- errors -------------------------------------------------------------------------------------------------------


def test_float32_on_gpu_is_a_trace_time_error():
  q = jnp.zeros((1, 8, 2, 64), jnp.float32)
  with pytest.raises(TypeError, match="float16 or bfloat16 on GPUs"):
    jax.jit(jax_flash.attention).lower(q, q, q)


@pytest.mark.skipif(max(BUILT_HEAD_DIMS, default=256) >= 256, reason="every head dim up to 256 is built")
def test_head_dim_beyond_the_build_is_a_trace_time_error():
  head_dim = max(BUILT_HEAD_DIMS) + 8
  q = jnp.zeros((1, 8, 2, head_dim), jnp.bfloat16)
  with pytest.raises(ValueError, match=f"head_dim {head_dim} has no CUDA kernel"):
    jax.jit(jax_flash.attention).lower(q, q, q)
