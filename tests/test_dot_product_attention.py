"""jax_flash.dot_product_attention: jax.nn.dot_product_attention's results, on jax_flash's kernels where they apply,
with a warned fallback (or, for implementation="jax_flash", an error) where they do not."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash
from conftest import assert_close, random_qkv
from dispatch_helpers import lowers_to_jax_flash, no_fallback, run_on_jax_flash

F32 = jnp.float32


def _qkv(rng, seqlen_q=8, seqlen_k=8, heads_q=4, heads_k=2, head_dim=16, dtype=F32, batch=2):
  return random_qkv(rng, batch, seqlen_q, seqlen_k, heads_q, heads_k, head_dim, dtype)


def _band_mask(seqlen_q, seqlen_k, lo, hi):
  """[T, S] numpy boolean: lo <= j - i <= hi (top-left, as jax.nn states masks)."""
  offset = np.arange(seqlen_k)[None, :] - np.arange(seqlen_q)[:, None]
  return (offset >= lo) & (offset <= hi)


# (T, S, N, K, jax.nn arguments) that jax_flash computes: every band below leaves no row empty and, for T < S,
# reaches jax_flash's bottom-right diagonal (a window right bound r >= S - T).
COVERED = {
    "square_mha": (8, 8, 4, 4, dict()),
    "square_mqa": (8, 8, 4, 1, dict()),
    "square_causal": (8, 8, 4, 2, dict(is_causal=True)),
    "square_window": (8, 8, 4, 2, dict(local_window_size=(3, 1))),
    "square_window_int": (8, 8, 4, 2, dict(local_window_size=2)),
    "square_causal_and_window": (8, 8, 4, 2, dict(is_causal=True, local_window_size=(2, 5))),
    "square_scale": (8, 8, 4, 2, dict(scale=0.3)),
    "tall": (12, 8, 4, 2, dict()),
    "tall_causal": (12, 8, 4, 1, dict(is_causal=True)),
    "tall_window": (12, 8, 4, 2, dict(local_window_size=(5, 1))),
    "tall_causal_and_window": (12, 8, 4, 4, dict(is_causal=True, local_window_size=(6, 0))),
    "wide": (8, 12, 4, 2, dict()),
    "wide_window": (8, 12, 4, 1, dict(local_window_size=(1, 5))),
    "wide_window_int": (8, 12, 4, 2, dict(local_window_size=6)),
}


@pytest.mark.parametrize("case", list(COVERED))
def test_covered_cases_run_jax_flash_and_equal_jax_nn(rng, case):
  seqlen_q, seqlen_k, heads_q, heads_k, kwargs = COVERED[case]
  q, k, v = _qkv(rng, seqlen_q, seqlen_k, heads_q, heads_k)
  out = run_on_jax_flash(functools.partial(jax_flash.dot_product_attention, **kwargs), q, k, v)
  assert_close(out, jax.nn.dot_product_attention(q, k, v, **kwargs), F32, case)


@pytest.mark.parametrize(
    "mask",
    [
        pytest.param(lambda t, s: np.tril(np.ones((t, s), bool)), id="tril"),
        pytest.param(lambda t, s: jnp.asarray(_band_mask(t, s, -2, 1))[None, None], id="band_device_array"),
        pytest.param(lambda t, s: np.ones((2, 1, t, s), bool), id="all_true"),
        pytest.param(lambda t, s: np.broadcast_to(_band_mask(t, s, -3, 0), (2, 4, t, s)), id="band_every_head"),
    ],
)
def test_concrete_band_masks_run_jax_flash_and_equal_jax_nn(rng, mask):
  q, k, v = _qkv(rng, 10, 8)
  m = mask(10, 8)
  out = run_on_jax_flash(lambda q, k, v: jax_flash.dot_product_attention(q, k, v, mask=m), q, k, v)
  assert_close(out, jax.nn.dot_product_attention(q, k, v, mask=m), F32, "mask")


def test_unbatched_inputs_and_residual_match_jax_nn(rng):
  q, k, v = (x[0] for x in _qkv(rng, 8, 8, batch=1))  # [T, N, H]
  ours = functools.partial(jax_flash.dot_product_attention, is_causal=True, return_residual=True)
  out, residual = run_on_jax_flash(ours, q, k, v)
  ref_out, ref_residual = jax.nn.dot_product_attention(q, k, v, is_causal=True, return_residual=True)
  assert out.shape == ref_out.shape and residual.shape == ref_residual.shape == (8, 4)
  assert_close(out, ref_out, F32, "output")
  np.testing.assert_allclose(residual, ref_residual, atol=1e-5, rtol=0)


def test_bfloat16_matches_jax_nn_within_bfloat16_rounding(rng):
  q, k, v = _qkv(rng, 16, 16, dtype=jnp.bfloat16)
  out = run_on_jax_flash(functools.partial(jax_flash.dot_product_attention, is_causal=True), q, k, v)
  assert out.dtype == jnp.bfloat16
  exact = jax.nn.dot_product_attention(*(x.astype(F32) for x in (q, k, v)), is_causal=True)
  assert_close(out, exact, jnp.bfloat16, "bf16 output")


def test_gradients_equal_jax_nn(rng):
  q, k, v = _qkv(rng, 12, 8)
  loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v, is_causal=True, local_window_size=(6, 0))))
  grads = run_on_jax_flash(jax.grad(loss(jax_flash.dot_product_attention), argnums=(0, 1, 2)), q, k, v)
  ref = jax.jit(jax.grad(loss(jax.nn.dot_product_attention), argnums=(0, 1, 2)))(q, k, v)
  for name, g, r in zip("qkv", grads, ref):
    assert_close(g, r, F32, f"d{name}")


def test_vmap_over_unbatched_calls_equals_jax_nn(rng):
  q, k, v = _qkv(rng, 8, 8)
  out = run_on_jax_flash(jax.vmap(functools.partial(jax_flash.dot_product_attention, is_causal=True)), q, k, v)
  assert_close(out, jax.nn.dot_product_attention(q, k, v, is_causal=True), F32, "vmap")


FALLBACKS = {
    "bias": (lambda q, k, v: dict(bias=jnp.ones((1, 4, 8, 8))), "bias"),
    "query_lengths": (lambda q, k, v: dict(query_seq_lengths=jnp.array([5, 8], jnp.int32)), "seq_lengths"),
    "kv_lengths": (lambda q, k, v: dict(key_value_seq_lengths=jnp.array([3, 8], jnp.int32)), "seq_lengths"),
    "arbitrary_mask": (
        lambda q, k, v: dict(mask=np.random.default_rng(0).random((1, 1, 8, 8)) < 0.7), "not a causal or sliding"
    ),
    "mask_differs_by_batch": (
        lambda q, k, v: dict(mask=np.stack([np.tril(np.ones((8, 8), bool)), np.ones((8, 8), bool)])[:, None]),
        "differs between batch entries or heads",
    ),
    "rows_with_no_key": (lambda q, k, v: dict(local_window_size=(-1, 3)), "see no key"),
    "causal_top_left_with_t_lt_s": (lambda q, k, v: dict(is_causal=True), "bottom-right"),
    "head_dim_not_multiple_of_8": (lambda q, k, v: dict(), "head_dim"),
}


def _fallback_inputs(rng, case):
  seqlen_k = 12 if case == "causal_top_left_with_t_lt_s" else 8
  head_dim = 12 if case == "head_dim_not_multiple_of_8" else 16
  return _qkv(rng, 8, seqlen_k, head_dim=head_dim)


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_fallbacks_warn_with_the_reason_and_equal_jax_nn(rng, case):
  q, k, v = _fallback_inputs(rng, case)
  make_kwargs, reason = FALLBACKS[case]
  kwargs = make_kwargs(q, k, v)
  with pytest.warns(jax_flash.FallbackWarning, match=reason):
    out = jax_flash.dot_product_attention(q, k, v, **kwargs)
  assert_close(out, jax.nn.dot_product_attention(q, k, v, **kwargs), F32, case)


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_implementation_jax_flash_raises_with_the_reason(rng, case):
  q, k, v = _fallback_inputs(rng, case)
  make_kwargs, reason = FALLBACKS[case]
  with pytest.raises(ValueError, match=rf"implementation='jax_flash'\) cannot compute this call: .*{reason}"):
    jax_flash.dot_product_attention(q, k, v, implementation="jax_flash", **make_kwargs(q, k, v))


def test_traced_mask_and_traced_scale_fall_back_under_jit(rng):
  q, k, v = _qkv(rng)
  mask = jnp.tril(jnp.ones((8, 8), bool))
  with pytest.warns(jax_flash.FallbackWarning, match="traced array"):
    out = jax.jit(lambda q, k, v, m: jax_flash.dot_product_attention(q, k, v, mask=m))(q, k, v, mask)
  assert_close(out, jax.nn.dot_product_attention(q, k, v, mask=mask), F32, "traced mask")
  with pytest.warns(jax_flash.FallbackWarning, match="scale is a traced value"):
    out = jax.jit(lambda q, k, v, s: jax_flash.dot_product_attention(q, k, v, scale=s))(q, k, v, 0.5)
  assert_close(out, jax.nn.dot_product_attention(q, k, v, scale=0.5), F32, "traced scale")


def test_fallback_warns_once_per_reason_under_the_default_filter(rng):
  q, k, v = _qkv(rng)
  bias = jnp.zeros((1, 4, 8, 8))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("default")
    for _ in range(3):
      jax_flash.dot_product_attention(q, k, v, bias=bias)
  assert [type(w.message) for w in caught] == [jax_flash.FallbackWarning]


@pytest.mark.parametrize("implementation", ["xla"])
def test_jax_implementations_pass_through_without_warning(rng, implementation):
  q, k, v = _qkv(rng)
  ours = functools.partial(jax_flash.dot_product_attention, is_causal=True, implementation=implementation)
  with no_fallback():
    assert not lowers_to_jax_flash(ours, q, k, v)
    out = ours(q, k, v)
  np.testing.assert_array_equal(out, jax.nn.dot_product_attention(q, k, v, is_causal=True))


INVALID = {
    "implementation": (dict(implementation="flash"), ValueError, "implementation must be one of"),
    "rank": (dict(query=lambda q: q[..., 0]), ValueError, "rank 4"),
    "heads": (dict(query=lambda q: q[:, :, :3]), ValueError, "multiple of key/value's heads"),
    "dtype": (dict(query=lambda q: q.astype(jnp.bfloat16)), TypeError, "same dtype"),
    "head_dim": (dict(query=lambda q: q[..., :8]), ValueError, "head dimension"),
    "mask_dtype": (dict(mask=np.ones((8, 8), np.int32)), TypeError, "mask must be a boolean array"),
    "mask_shape": (dict(mask=np.ones((3, 1, 8, 8), bool)), ValueError, "mask must broadcast"),
    "is_causal": (dict(is_causal=1), TypeError, "is_causal must be a Python bool"),
    "window": (dict(local_window_size=(1, 2, 3)), TypeError, "local_window_size must be"),
    "window_bool": (dict(local_window_size=True), TypeError, "local_window_size must be"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_arguments_raise_clearly(rng, case):
  q, k, v = _qkv(rng)
  kwargs, error, message = INVALID[case]
  kwargs = dict(kwargs)
  q = kwargs.pop("query", lambda q: q)(q)
  with pytest.raises(error, match=message):
    jax_flash.dot_product_attention(q, k, v, **kwargs)
