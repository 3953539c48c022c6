"""jax_flash.flax.nnx: nnx.MultiHeadAttention's parameters and outputs, on jax_flash's kernels; warned fallbacks;
decoding."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jax_flash
from conftest import assert_close
from dispatch_helpers import no_fallback, run_on_jax_flash
from jax_flash.flax.nnx import FlashMultiHeadAttention, FlashSelfAttention

F32 = jnp.float32
BATCH, LENGTH, FEATURES, HEADS = 2, 8, 32, 4  # head_dim 8


def _inputs(rng, *shape):
  return jnp.asarray(rng.standard_normal(shape, dtype=np.float32))


def _pair(seed=0, ours_only=None, **kwargs):
  """Our layer and nnx's, built from the same seed (so with the same parameters); ours_only: our extra arguments."""
  kwargs = dict(num_heads=HEADS, in_features=FEATURES, decode=False, **kwargs)
  ours = FlashMultiHeadAttention(**kwargs, **(ours_only or {}), rngs=nnx.Rngs(seed))
  return ours, nnx.MultiHeadAttention(**kwargs, rngs=nnx.Rngs(seed))


def _flat(tree):
  return jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(tree)])


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(num_kv_heads=2, normalize_qk=True, qkv_features=64, out_features=16)],
    ids=["default", "gqa_normalize_qk_features"],
)
def test_parameters_equal_nnx(kwargs):
  ours, theirs = _pair(**kwargs)
  params, flax_params = nnx.state(ours, nnx.Param), nnx.state(theirs, nnx.Param)
  assert jax.tree.structure(params) == jax.tree.structure(flax_params)
  jax.tree.map(np.testing.assert_array_equal, params, flax_params)


# name: (shared layer arguments, our extra layer arguments, call arguments, nnx's call arguments)
CASES = {
    "no_mask": (dict(), dict(), dict(), dict()),
    "is_causal": (dict(), dict(), dict(is_causal=True), dict(is_causal=True)),
    "gqa_is_causal": (dict(num_kv_heads=2), dict(), dict(is_causal=True), dict(is_causal=True)),
    "mqa": (dict(num_kv_heads=1), dict(), dict(), dict()),
    "causal_argument": (dict(), dict(causal=True), dict(), dict(is_causal=True)),
    "concrete_causal_mask": (dict(), dict(), "causal_mask", "causal_mask"),
    "normalize_qk": (dict(normalize_qk=True), dict(), dict(is_causal=True), dict(is_causal=True)),
    # nnx's is_causal is jnp.tril over [T, S], top-left aligned; with T > S it is a window jax_flash computes.
    "cross_attention_is_causal": (dict(), dict(), "shorter_keys", "shorter_keys"),
}


def _call(rng, call):
  if call == "causal_mask":
    return dict(mask=nnx.make_causal_mask(jnp.ones((BATCH, LENGTH))))  # concrete: built outside any trace
  if call == "shorter_keys":
    return dict(inputs_k=_inputs(rng, BATCH, 5, FEATURES), is_causal=True)
  return call


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_equal_nnx_given_the_same_parameters(rng, case):
  shared, ours_only, call, flax_call = CASES[case]
  ours, theirs = _pair(ours_only=ours_only, **shared)
  x = _inputs(rng, BATCH, LENGTH, FEATURES)
  if call == flax_call:
    call = flax_call = _call(rng, call)  # the same arrays for both layers
  out = run_on_jax_flash(lambda x: ours(x, **call), x)
  assert_close(out, theirs(x, **flax_call), F32, case)


def test_jit_grad_and_remat_equal_nnx(rng):
  x = _inputs(rng, BATCH, LENGTH, FEATURES)
  ours, theirs = _pair(num_kv_heads=2)
  loss = lambda layer: jnp.sum(jnp.sin(layer(x, is_causal=True)))
  remat_loss = lambda layer: jnp.sum(jnp.sin(nnx.remat(lambda m, x: m(x, is_causal=True))(layer, x)))
  with no_fallback():
    grads = nnx.jit(nnx.grad(loss))(ours)
    remat_grads = nnx.jit(nnx.grad(remat_loss))(ours)
  flax_grads = nnx.jit(nnx.grad(loss))(theirs)
  assert_close(_flat(grads), _flat(flax_grads), F32, "parameter gradients")
  assert_close(_flat(remat_grads), _flat(flax_grads), F32, "remat parameter gradients")


def test_vmap_over_a_leading_axis_equals_nnx(rng):
  xs = _inputs(rng, 3, BATCH, LENGTH, FEATURES)
  ours, theirs = _pair()
  out = run_on_jax_flash(jax.vmap(lambda x: ours(x, is_causal=True)), xs)
  assert_close(out, theirs(xs, is_causal=True), F32, "vmap")


@pytest.mark.parametrize("window_size", [(-1, -1), (3, 0)])
def test_decoding_token_by_token_equals_the_full_causal_output(rng, window_size):
  x = _inputs(rng, BATCH, LENGTH, FEATURES)
  layer = FlashSelfAttention(HEADS, FEATURES, num_kv_heads=2, causal=True, window_size=window_size, rngs=nnx.Rngs(1))
  full = run_on_jax_flash(lambda x: layer(x), x)
  layer.init_cache((BATCH, LENGTH, FEATURES))
  step = nnx.jit(lambda layer, token: layer(token, decode=True))
  with no_fallback():
    tokens = [step(layer, x[:, t : t + 1]) for t in range(LENGTH)]
  assert int(layer.cache_index[...]) == LENGTH
  assert_close(jnp.concatenate(tokens, axis=1), full, F32, "decoded tokens")


def test_drop_in_decoding_equals_nnx_decoding(rng):
  x = _inputs(rng, BATCH, LENGTH, FEATURES)
  ours, theirs = _pair(num_kv_heads=2)
  for layer in (ours, theirs):
    layer.init_cache((BATCH, LENGTH, FEATURES))
  for t in range(3):
    token = x[:, t : t + 1]
    assert_close(ours(token, decode=True), theirs(token, decode=True), F32, f"token {t}")
  np.testing.assert_allclose(ours.cached_key[...], theirs.cached_key[...], rtol=1e-6, atol=1e-6)


def _fallback_case(case):
  """(layer arguments, run(layer, x), warning match) for one fallback case."""
  if case == "arbitrary_mask":
    mask = jnp.asarray(np.random.default_rng(0).random((1, 1, LENGTH, LENGTH)) < 0.7)
    return dict(), lambda layer, x: layer(x, mask=mask), "not a causal or sliding-window band"
  if case == "traced_mask":
    mask = nnx.make_causal_mask(jnp.ones((BATCH, LENGTH)))
    jitted = nnx.jit(lambda layer, x, mask: layer(x, mask=mask))  # the mask is an argument: traced
    return dict(), lambda layer, x: jitted(layer, x, mask), "traced array"
  if case == "dropout":
    return dict(dropout_rate=0.5, deterministic=False), lambda layer, x: layer(x), "attention dropout is active"
  if case == "sow_weights":  # the weights come back too, and must equal nnx's
    return dict(), nnx.capture(lambda layer, x: layer(x, sow_weights=True), nnx.Intermediate), "sow_weights=True"
  if case == "custom_attention_fn":
    fn = functools.partial(nnx.dot_product_attention, broadcast_dropout=False)
    return dict(attention_fn=fn), lambda layer, x: layer(x), "attention_fn is set"
  raise AssertionError(case)


@pytest.mark.parametrize("case", ["arbitrary_mask", "traced_mask", "dropout", "sow_weights", "custom_attention_fn"])
def test_fallbacks_warn_with_the_reason_and_equal_nnx(rng, case):
  layer_kwargs, run, reason = _fallback_case(case)
  x = _inputs(rng, BATCH, LENGTH, FEATURES)
  ours, theirs = _pair(**layer_kwargs)
  with pytest.warns(jax_flash.FallbackWarning, match=reason):
    out = run(ours, x)
  assert_close(_flat(out), _flat(run(theirs, x)), F32, case)


def test_invalid_arguments_raise_clearly(rng):
  with pytest.raises(ValueError, match="FlashSelfAttention: window_size"):
    FlashSelfAttention(HEADS, FEATURES, window_size=(-3, 0), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="right bound must be -1 or 0 with causal=True"):
    FlashSelfAttention(HEADS, FEATURES, causal=True, window_size=(2, 2), rngs=nnx.Rngs(0))
  layer = FlashSelfAttention(HEADS, FEATURES, causal=True, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="init_cache"):
    layer(_inputs(rng, BATCH, 1, FEATURES), decode=True)
