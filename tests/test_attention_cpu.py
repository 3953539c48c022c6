"""jax_flash.attention on the CPU, through the real custom call, against the float64 NumPy reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash
import reference_numpy as ref
from conftest import assert_close, assert_lse_matches, random_qkv

DTYPES = (jnp.float32, jnp.float16, jnp.bfloat16)

# (batch, seqlen_q, seqlen_k, heads_q, heads_k, head_dim): lengths 1, 7, 129, 1000, Sq != Sk both ways, GQA ratios
# 1, 2 and 8, head dims 8 to 256 (multiples of 8 that are not powers of two included).
SHAPES = (
    (1, 1, 1, 2, 2, 64),
    (2, 7, 7, 4, 2, 8),
    (1, 129, 129, 8, 1, 40),
    (1, 7, 129, 2, 1, 128),
    (2, 129, 7, 4, 4, 96),
    (1, 1, 1000, 8, 1, 256),
    (1, 1000, 1000, 2, 1, 72),
    (1, 200, 70, 2, 2, 256),
)

# Keyword arguments of jax_flash.attention; windows are bottom-right aligned like causal.
MASKS = {
    "full": {},
    "causal": {"causal": True},
    "window": {"window_size": (16, 5)},
    "window_left_causal": {"causal": True, "window_size": (9, 0)},
    "window_right_only": {"window_size": (-1, 3)},
    "softcap": {"softcap": 2.0, "softmax_scale": 0.9},
}

LSE_ATOL = {jnp.float32: 1e-5, jnp.float16: 2e-3, jnp.bfloat16: 1e-2}


def shape_id(shape):
  b, sq, sk, hq, hk, d = shape
  return f"b{b}-sq{sq}-sk{sk}-h{hq}x{hk}-d{d}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("mask", MASKS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_forward_matches_float64_reference(rng, shape, mask, dtype):
  q, k, v = random_qkv(rng, *shape, dtype)
  kwargs = MASKS[mask]
  o, lse = jax.jit(lambda q, k, v: jax_flash.attention(q, k, v, return_lse=True, **kwargs))(q, k, v)
  ref_o, ref_lse = ref.forward(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), **kwargs)
  assert o.dtype == q.dtype and o.shape == q.shape
  assert lse.dtype == jnp.float32 and lse.shape == (shape[0], shape[3], shape[1])
  assert_close(o, ref_o, dtype, "o")
  assert_lse_matches(lse, ref_lse, LSE_ATOL[dtype])


GRAD_SHAPES = (
    (2, 7, 7, 4, 2, 8),
    (1, 129, 70, 8, 1, 64),
    (1, 70, 129, 2, 2, 136),
    (1, 1, 200, 4, 1, 256),
)

# Gradients are rounded to the input dtype and depend on o rounded to it (delta = rowsum(dout * o)).
GRAD_FACTOR = 2.0


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("mask", MASKS, ids=str)
@pytest.mark.parametrize("shape", GRAD_SHAPES, ids=shape_id)
def test_gradients_match_float64_reference(rng, shape, mask, dtype):
  q, k, v = random_qkv(rng, *shape, dtype)
  kwargs = MASKS[mask]
  dout = jnp.asarray(rng.standard_normal(q.shape, dtype=np.float32)).astype(dtype)
  dlse = jnp.asarray(rng.standard_normal((shape[0], shape[3], shape[1]), dtype=np.float32))

  def loss(q, k, v):
    o, lse = jax_flash.attention(q, k, v, return_lse=True, **kwargs)
    finite_lse = jnp.where(jnp.isfinite(lse), lse, 0.0)
    return jnp.sum(o.astype(jnp.float32) * dout.astype(jnp.float32)) + jnp.sum(finite_lse * dlse)

  dq, dk, dv = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
  f32 = lambda x: np.asarray(x.astype(jnp.float32))
  _, ref_lse = ref.forward(f32(q), f32(k), f32(v), **kwargs)
  ref_dlse = np.where(np.isfinite(ref_lse), f32(dlse), 0.0)
  ref_dq, ref_dk, ref_dv = ref.backward(f32(q), f32(k), f32(v), f32(dout), ref_dlse, **kwargs)
  for name, got, want, grad_of in (("dq", dq, ref_dq, q), ("dk", dk, ref_dk, k), ("dv", dv, ref_dv, v)):
    assert got.dtype == grad_of.dtype and got.shape == grad_of.shape, name
    assert_close(got, want, dtype, name, factor=GRAD_FACTOR)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_rows_that_see_no_key_give_zero_output_and_neg_inf_lse_and_finite_gradients(rng, dtype):
  # Causal with Sq > Sk (bottom-right aligned): the first Sq - Sk rows see no key.
  q, k, v = random_qkv(rng, 2, 40, 16, 4, 2, 32, dtype)
  o, lse = jax_flash.attention(q, k, v, causal=True, return_lse=True)
  empty = 40 - 16
  assert np.all(np.asarray(o[:, :empty]) == 0)
  assert np.all(np.isneginf(np.asarray(lse[:, :, :empty])))
  assert np.all(np.isfinite(np.asarray(lse[:, :, empty:])))
  grads = jax.grad(lambda q, k, v: jnp.sum(jax_flash.attention(q, k, v, causal=True).astype(jnp.float32) ** 2),
                   argnums=(0, 1, 2))(q, k, v)
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g.astype(jnp.float32))))
  assert np.all(np.asarray(grads[0][:, :empty]) == 0)


def test_window_smaller_than_distance_to_keys_empties_rows(rng):
  # Sq = 30, Sk = 10: the diagonal of row i is key i - 20, so with window (0, 0) only the last 10 rows see a key.
  q, k, v = random_qkv(rng, 1, 30, 10, 2, 2, 16, jnp.float32)
  o, lse = jax_flash.attention(q, k, v, window_size=(0, 0), return_lse=True)
  ref_o, ref_lse = ref.forward(q, k, v, window_size=(0, 0))
  assert np.isneginf(np.asarray(lse)).sum() == 2 * 20
  assert_close(o, ref_o, jnp.float32, "o")
  assert_lse_matches(lse, ref_lse, LSE_ATOL[jnp.float32])


def test_forward_is_deterministic(rng):
  q, k, v = random_qkv(rng, 2, 300, 300, 4, 2, 64, jnp.bfloat16)
  f = jax.jit(lambda q, k, v: jax_flash.attention(q, k, v, causal=True, return_lse=True))
  first, second = f(q, k, v), f(q, k, v)
  for a, b in zip(first, second):
    assert np.array_equal(np.asarray(a.astype(jnp.float32)), np.asarray(b.astype(jnp.float32)))


def test_deterministic_gradients_equal_the_default_ones_bitwise(rng):
  """deterministic=True reaches the backward custom call (an attribute the handler decodes) and, on the CPU
  (deterministic either way), gives exactly the default gradients."""
  q, k, v = random_qkv(rng, 2, 37, 53, 4, 2, 32, jnp.float32)

  def grads(deterministic):
    loss = lambda q, k, v: jnp.sum(jax_flash.attention(q, k, v, causal=True, deterministic=deterministic) ** 2)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)

  for a, b in zip(grads(True), grads(False)):
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_reference_attention_matches_float64_numpy(rng):
  q, k, v = random_qkv(rng, 2, 33, 50, 4, 2, 16, jnp.float32)
  for kwargs in MASKS.values():
    o, lse = jax_flash.reference_attention(q, k, v, return_lse=True, **kwargs)
    ref_o, ref_lse = ref.forward(q, k, v, **kwargs)
    assert_close(o, ref_o, jnp.float32, "reference o")
    assert_lse_matches(lse, ref_lse, LSE_ATOL[jnp.float32])


def test_default_softmax_scale_is_inverse_sqrt_head_dim(rng):
  q, k, v = random_qkv(rng, 1, 20, 20, 2, 2, 64, jnp.float32)
  assert np.array_equal(np.asarray(jax_flash.attention(q, k, v)),
                        np.asarray(jax_flash.attention(q, k, v, softmax_scale=0.125)))


def test_large_scores_do_not_overflow(rng):
  # Scores of several thousand: the online softmax must subtract the running max before exponentiating.
  q, k, v = random_qkv(rng, 1, 64, 200, 2, 1, 32, jnp.float32)
  o, lse = jax_flash.attention(q * 30, k * 30, v, return_lse=True)
  ref_o, ref_lse = ref.forward(q * 30, k * 30, v)
  assert_close(o, ref_o, jnp.float32, "o", factor=5)
  np.testing.assert_allclose(np.asarray(lse), ref_lse, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_float32_accumulation_keeps_long_sequences_accurate(rng, dtype):
  # 4096 keys: summing in the input dtype would lose several bits; float32 accumulation stays at rounding level.
  q, k, v = random_qkv(rng, 1, 16, 4096, 1, 1, 64, dtype)
  o = jax_flash.attention(q, k, v)
  ref_o, _ = ref.forward(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32))
  assert_close(o, ref_o, dtype, "o")
