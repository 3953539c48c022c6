"""vmap of jax_flash.attention over any subset of q, k, v, at any axis, nested and with grad, gives exactly the
per-example results, as one custom call on a folded batch (no loop)."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash
from conftest import assert_close

MAPPED = 3  # the vmapped axis' size; > 1, and the batch inside each example is > 1 too
BATCH, SEQLEN_Q, SEQLEN_K, HEADS_Q, HEADS_K, HEAD_DIM = 2, 12, 20, 4, 2, 16

_attention = functools.partial(jax_flash.attention, causal=True, return_lse=True)


def _draw(rng, shape, axis):
  """A standard-normal array of `shape` with a mapped axis of size MAPPED inserted at `axis` (None: no axis)."""
  if axis is not None:
    shape = (*shape[:axis], MAPPED, *shape[axis:])
  return jnp.asarray(rng.standard_normal(shape, dtype=np.float32))


def _inputs(rng, in_axes):
  q_axis, k_axis, v_axis = in_axes
  return (_draw(rng, (BATCH, SEQLEN_Q, HEADS_Q, HEAD_DIM), q_axis),
          _draw(rng, (BATCH, SEQLEN_K, HEADS_K, HEAD_DIM), k_axis),
          _draw(rng, (BATCH, SEQLEN_K, HEADS_K, HEAD_DIM), v_axis))


def _example(args, in_axes, i):
  return [x if axis is None else jnp.take(x, i, axis=axis) for x, axis in zip(args, in_axes)]


def _loss(weights, q, k, v):
  """A loss with fresh random cotangents for o and lse, so every output element counts differently."""
  o, lse = _attention(q, k, v)
  w_o, w_lse = weights
  return jnp.sum(o * w_o) + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0) * w_lse)


def _weights(rng):
  return (jnp.asarray(rng.standard_normal((BATCH, SEQLEN_Q, HEADS_Q, HEAD_DIM), dtype=np.float32)),
          jnp.asarray(rng.standard_normal((BATCH, HEADS_Q, SEQLEN_Q), dtype=np.float32)))


def _custom_calls(text, target):
  return len(re.findall(rf"custom_call @{target}\(", text))


# (q, k, v) in_axes: q alone (folded into heads), at the front and right after its head axis; k alone, k and v,
# all three at different positions, q and v at their last axis (folded into the batch).
IN_AXES = {
    "q": (0, None, None),
    "q_after_heads": (3, None, None),
    "k": (None, 0, None),
    "kv": (None, 1, 1),
    "qkv_mixed_axes": (0, 2, 0),
    "qv_last_axis": (4, None, 4),
}


@pytest.mark.parametrize("in_axes", IN_AXES.values(), ids=IN_AXES.keys())
def test_vmap_equals_a_loop_of_unbatched_calls_as_one_custom_call(rng, in_axes):
  args = _inputs(rng, in_axes)
  batched = jax.jit(jax.vmap(_attention, in_axes=in_axes))
  o, lse = batched(*args)
  for i in range(MAPPED):
    o_i, lse_i = _attention(*_example(args, in_axes, i))
    np.testing.assert_array_equal(o[i], o_i)
    np.testing.assert_array_equal(lse[i], lse_i)
  text = batched.lower(*args).as_text()
  assert _custom_calls(text, "jax_flash_fwd") == 1 and "stablehlo.while" not in text


@pytest.mark.parametrize("in_axes", IN_AXES.values(), ids=IN_AXES.keys())
def test_vmap_of_grad_equals_per_example_gradients(rng, in_axes):
  args = _inputs(rng, in_axes)
  weights = _weights(rng)
  grad = jax.grad(functools.partial(_loss, weights), argnums=(0, 1, 2))
  batched = jax.jit(jax.vmap(grad, in_axes=in_axes))
  grads = batched(*args)
  for i in range(MAPPED):
    for got, want in zip(grads, grad(*_example(args, in_axes, i))):
      np.testing.assert_array_equal(got[i], want)
  text = batched.lower(*args).as_text()
  assert _custom_calls(text, "jax_flash_fwd") == 1 and _custom_calls(text, "jax_flash_bwd") == 1
  assert "stablehlo.while" not in text


@pytest.mark.parametrize("in_axes", IN_AXES.values(), ids=IN_AXES.keys())
def test_grad_of_vmap_sums_per_example_gradients(rng, in_axes):
  args = _inputs(rng, in_axes)
  weights = _weights(rng)
  total = lambda q, k, v: jnp.sum(jax.vmap(functools.partial(_loss, weights), in_axes=in_axes)(q, k, v))
  grads = jax.jit(jax.grad(total, argnums=(0, 1, 2)))(*args)
  per_example = [jax.grad(functools.partial(_loss, weights), argnums=(0, 1, 2))(*_example(args, in_axes, i))
                 for i in range(MAPPED)]
  for arg, axis, got, wants in zip("qkv", in_axes, grads, zip(*per_example)):
    want = jnp.stack(wants, axis=axis) if axis is not None else sum(wants)
    assert_close(got, want, jnp.float32, f"d{arg}")


def test_nested_vmap_over_kv_then_q_equals_a_double_loop(rng):
  # Outer vmap maps k, v (folded into the batch), inner vmap maps q at its head-dim-adjacent axis (into heads).
  q = _draw(rng, (BATCH, SEQLEN_Q, HEADS_Q, HEAD_DIM), 3)  # [B, Sq, Hq, n, D]
  k = _draw(rng, (BATCH, SEQLEN_K, HEADS_K, HEAD_DIM), 0)  # [n, B, Sk, Hk, D]
  v = _draw(rng, (BATCH, SEQLEN_K, HEADS_K, HEAD_DIM), 0)
  inner = jax.vmap(_attention, in_axes=(3, None, None))
  nested = jax.jit(jax.vmap(inner, in_axes=(None, 0, 0)))
  o, lse = nested(q, k, v)  # [n_kv, n_q, ...]
  for i in range(MAPPED):
    for j in range(MAPPED):
      o_ij, lse_ij = _attention(q[:, :, :, j], k[i], v[i])
      np.testing.assert_array_equal(o[i, j], o_ij)
      np.testing.assert_array_equal(lse[i, j], lse_ij)
  assert _custom_calls(nested.lower(q, k, v).as_text(), "jax_flash_fwd") == 1


def test_nested_vmap_of_grad_over_q_twice_equals_a_double_loop(rng):
  # Both levels map q only (each folds into the heads); the gradient's backward folds both into the batch.
  q = jnp.asarray(rng.standard_normal((MAPPED, BATCH, SEQLEN_Q, HEADS_Q, MAPPED + 1, HEAD_DIM), np.float32))
  k, v = _inputs(rng, (None, None, None))[1:]
  weights = _weights(rng)
  grad = jax.grad(functools.partial(_loss, weights), argnums=(0, 1, 2))
  nested = jax.jit(jax.vmap(jax.vmap(grad, in_axes=(3, None, None)), in_axes=(0, None, None)))
  dq, dk, dv = nested(q, k, v)
  for i in range(MAPPED):
    for j in range(MAPPED + 1):
      dq_ij, dk_ij, dv_ij = grad(q[i, :, :, :, j], k, v)
      np.testing.assert_array_equal(dq[i, j], dq_ij)
      np.testing.assert_array_equal(dk[i, j], dk_ij)
      np.testing.assert_array_equal(dv[i, j], dv_ij)
  text = nested.lower(q, k, v).as_text()
  assert _custom_calls(text, "jax_flash_fwd") == 1 and _custom_calls(text, "jax_flash_bwd") == 1


@pytest.mark.parametrize(
    "in_axes, out_axes",
    [((0, 0, 0), 0), ((3, None, None), (3, 2))],
    ids=["batch_folded_at_axis_0", "q_folded_into_heads_after_its_head_axis"],
)
def test_folding_copies_nothing_where_the_layout_allows(rng, in_axes, out_axes):
  args = _inputs(rng, in_axes)
  compiled = jax.jit(jax.vmap(_attention, in_axes=in_axes, out_axes=out_axes)).lower(*args).compile().as_text()
  ops = set(re.findall(r"= \S+ ([a-z-]+)\(", compiled))
  assert not ops & {"copy", "transpose", "fusion"}, f"the fold should be bitcasts only; found {sorted(ops)}"
