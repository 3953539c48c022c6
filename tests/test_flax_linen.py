"""jax_flash.flax (linen): Flax's parameters and outputs, on jax_flash's kernels; warned fallbacks; decoding."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash
from conftest import assert_close
from dispatch_helpers import no_fallback, run_on_jax_flash
from jax_flash.flax import FlashMultiHeadDotProductAttention, FlashSelfAttention

F32 = jnp.float32
BATCH, LENGTH, FEATURES, HEADS = 2, 8, 32, 4  # head_dim 8


def _inputs(rng, *shape):
  return jnp.asarray(rng.standard_normal(shape, dtype=np.float32))


def _band_mask(length, left):
  """[1, 1, T, T] Flax mask: causal, and at most `left` keys back (nn.make_attention_mask's layout)."""
  positions = jnp.arange(length)
  return nn.make_attention_mask(positions, positions, lambda i, j: (j <= i) & (j >= i - left))[None]


def _assert_trees_close(tree, expected, what):
  """Relative error over all leaves together (some gradients are zero analytically, e.g. the key bias's)."""
  assert jax.tree.structure(tree) == jax.tree.structure(expected)
  flat = lambda t: jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(t)])
  assert_close(flat(tree), flat(expected), F32, what)


def _assert_trees_equal(tree, expected):
  assert jax.tree.structure(tree) == jax.tree.structure(expected)
  jax.tree.map(np.testing.assert_array_equal, tree, expected)


@pytest.mark.parametrize(
    "fields",
    [dict(), dict(qkv_features=64, out_features=16, normalize_qk=True, use_bias=False)],
    ids=["default", "features_normalize_qk_no_bias"],
)
def test_parameter_tree_equals_flax(rng, fields):
  x, kv = _inputs(rng, BATCH, LENGTH, FEATURES), _inputs(rng, BATCH, 5, 24)
  ours = FlashMultiHeadDotProductAttention(num_heads=HEADS, **fields).init(jax.random.key(0), x, kv)
  flax_params = nn.MultiHeadDotProductAttention(num_heads=HEADS, **fields).init(jax.random.key(0), x, kv)
  _assert_trees_equal(ours, flax_params)


def _flax_case(rng, case):
  """(our layer, Flax's layer, call arguments, Flax's call arguments) for one no-fallback case."""
  x = _inputs(rng, BATCH, LENGTH, FEATURES)
  ours, theirs = dict(num_heads=HEADS), dict(num_heads=HEADS)
  args, flax_args = dict(inputs_q=x), dict(inputs_q=x)
  causal_mask = nn.make_causal_mask(jnp.ones((BATCH, LENGTH)))  # concrete: built outside any trace
  if case == "causal_mask":
    args["mask"] = flax_args["mask"] = causal_mask
  elif case == "causal_field":
    ours["causal"] = True
    flax_args["mask"] = causal_mask
  elif case == "window_field":
    ours.update(causal=True, window_size=(2, 0))
    flax_args["mask"] = _band_mask(LENGTH, 2)
  elif case == "window_mask":
    args["mask"] = flax_args["mask"] = _band_mask(LENGTH, 3)
  elif case == "normalize_qk":
    ours["normalize_qk"] = theirs["normalize_qk"] = True
  elif case == "cross_attention":
    args["inputs_k"] = flax_args["inputs_k"] = _inputs(rng, BATCH, 5, 24)
  elif case == "no_batch_dims":
    args["inputs_q"] = flax_args["inputs_q"] = x[0]
  elif case == "two_batch_dims":
    args["inputs_q"] = flax_args["inputs_q"] = _inputs(rng, 3, BATCH, LENGTH, FEATURES)
  return FlashMultiHeadDotProductAttention(**ours), nn.MultiHeadDotProductAttention(**theirs), args, flax_args


CASES = ["no_mask", "causal_mask", "causal_field", "window_field", "window_mask", "normalize_qk", "cross_attention",
         "no_batch_dims", "two_batch_dims"]


@pytest.mark.parametrize("case", CASES)
def test_outputs_equal_flax_given_the_same_parameters(rng, case):
  ours, theirs, args, flax_args = _flax_case(rng, case)
  params = theirs.init(jax.random.key(1), **flax_args)
  out = run_on_jax_flash(lambda p: ours.apply(p, **args), params)
  assert_close(out, theirs.apply(params, **flax_args), F32, case)


def test_bfloat16_layer_matches_flax_in_float32_within_bfloat16_rounding(rng):
  x = _inputs(rng, BATCH, 16, 64)
  ours = FlashSelfAttention(num_heads=HEADS, causal=True, dtype=jnp.bfloat16)
  params = ours.init(jax.random.key(1), x)
  out = run_on_jax_flash(ours.apply, params, x)
  assert out.dtype == jnp.bfloat16
  exact = nn.MultiHeadDotProductAttention(num_heads=HEADS).apply(
      params, x, mask=nn.make_causal_mask(jnp.ones((BATCH, 16)))
  )
  assert_close(out, exact, jnp.bfloat16, "bfloat16 layer")


def test_inputs_kv_is_accepted_as_flax_accepts_it(rng):
  x, kv = _inputs(rng, BATCH, LENGTH, FEATURES), _inputs(rng, BATCH, 5, FEATURES)
  theirs = nn.MultiHeadDotProductAttention(num_heads=HEADS)
  params = theirs.init(jax.random.key(1), x)
  with pytest.warns(DeprecationWarning, match="inputs_kv"):
    out = FlashMultiHeadDotProductAttention(num_heads=HEADS).apply(params, x, inputs_kv=kv)
  with pytest.warns(DeprecationWarning):
    assert_close(out, theirs.apply(params, x, inputs_kv=kv), F32, "inputs_kv")


def _repeat_kv_heads(params, group):
  """Flax's MHA parameters equal to a GQA layer's: key/value heads repeated (query head h reads kv head h // group)."""
  params = jax.tree.map(lambda a: a, params)  # copy of the nested dicts
  for name in ("key", "value"):
    params["params"][name] = {n: jnp.repeat(a, group, axis=1 if n == "kernel" else 0)
                              for n, a in params["params"][name].items()}
  return params


def test_grouped_query_attention_equals_flax_with_repeated_kv_heads(rng):
  x = _inputs(rng, BATCH, LENGTH, FEATURES)
  ours = FlashSelfAttention(num_heads=HEADS, num_kv_heads=2, causal=True)
  params = ours.init(jax.random.key(2), x)
  assert params["params"]["key"]["kernel"].shape == (FEATURES, 2, FEATURES // HEADS)
  out = run_on_jax_flash(ours.apply, params, x)
  flax_out = nn.MultiHeadDotProductAttention(num_heads=HEADS).apply(
      _repeat_kv_heads(params, HEADS // 2), x, mask=nn.make_causal_mask(jnp.ones((BATCH, LENGTH)))
  )
  assert_close(out, flax_out, F32, "gqa")


def test_parameter_gradients_equal_flax(rng):
  x = _inputs(rng, BATCH, LENGTH, FEATURES)
  mask = nn.make_causal_mask(jnp.ones((BATCH, LENGTH)))
  theirs = nn.MultiHeadDotProductAttention(num_heads=HEADS)
  params = theirs.init(jax.random.key(3), x)
  ours = FlashMultiHeadDotProductAttention(num_heads=HEADS, causal=True)
  loss = lambda p: jnp.sum(jnp.sin(ours.apply(p, x)))
  grads = run_on_jax_flash(jax.grad(loss), params)
  flax_grads = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(theirs.apply(p, x, mask=mask)))))(params)
  _assert_trees_close(grads, flax_grads, "parameter gradients")


def test_vmap_over_a_leading_axis_equals_flax(rng):
  xs = _inputs(rng, 3, BATCH, LENGTH, FEATURES)
  ours = FlashSelfAttention(num_heads=HEADS, causal=True)
  params = ours.init(jax.random.key(4), xs[0])
  out = run_on_jax_flash(jax.vmap(lambda x: ours.apply(params, x)), xs)
  flax_out = nn.MultiHeadDotProductAttention(num_heads=HEADS).apply(
      params, xs, mask=nn.make_causal_mask(jnp.ones(xs.shape[:-1]))
  )
  assert_close(out, flax_out, F32, "vmap")


class _Block(nn.Module):
  remat: bool

  @nn.compact
  def __call__(self, x):
    layer = nn.remat(FlashSelfAttention) if self.remat else FlashSelfAttention
    return x + layer(num_heads=HEADS, causal=True, name="attention")(x)


def test_remat_gives_the_same_values_and_gradients(rng):
  x = _inputs(rng, BATCH, LENGTH, FEATURES)
  params = _Block(remat=False).init(jax.random.key(5), x)
  loss = lambda remat: lambda p: jnp.sum(jnp.sin(_Block(remat=remat).apply(p, x)))
  grads = run_on_jax_flash(jax.grad(loss(True)), params)
  _assert_trees_close(grads, jax.jit(jax.grad(loss(False)))(params), "remat gradients")


@pytest.mark.parametrize("window_size", [(-1, -1), (3, 0)])
def test_decoding_token_by_token_equals_the_full_causal_output(rng, window_size):
  x = _inputs(rng, BATCH, LENGTH, FEATURES)
  fields = dict(num_heads=HEADS, num_kv_heads=2, causal=True, window_size=window_size)
  full_layer = FlashSelfAttention(**fields)
  params = full_layer.init(jax.random.key(6), x)["params"]
  full = run_on_jax_flash(lambda p: full_layer.apply({"params": p}, x), params)

  decoder = FlashSelfAttention(decode=True, **fields)
  cache = decoder.init(jax.random.key(6), x)["cache"]  # sized by the full-length input
  step = jax.jit(lambda cache, token: decoder.apply({"params": params, "cache": cache}, token, mutable=["cache"]))
  tokens = []
  with no_fallback():
    for t in range(LENGTH):
      out, variables = step(cache, x[:, t : t + 1])
      cache = variables["cache"]
      tokens.append(out)
  assert int(cache["cache_index"]) == LENGTH
  assert_close(jnp.concatenate(tokens, axis=1), full, F32, "decoded tokens")


def test_drop_in_decoding_equals_flax_decoding(rng):
  x = _inputs(rng, BATCH, LENGTH, FEATURES)
  ours, theirs = (cls(num_heads=HEADS, decode=True)
                  for cls in (FlashMultiHeadDotProductAttention, nn.MultiHeadDotProductAttention))
  variables = theirs.init(jax.random.key(7), x)
  step = jax.jit(lambda layer, cache, token: layer.apply({**variables, "cache": cache}, token, mutable=["cache"]),
                 static_argnums=0)
  cache = flax_cache = variables["cache"]
  for t in range(3):
    token = x[:, t : t + 1]
    out, cache = step(ours, cache, token)
    flax_out, flax_cache = step(theirs, flax_cache, token)
    assert_close(out, flax_out, F32, f"token {t}")
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), cache, flax_cache)


def _fallback_case(rng, case):
  """(layer fields, call arguments, Flax call arguments, apply kwargs, jit, warning match) for one fallback."""
  x = _inputs(rng, BATCH, LENGTH, FEATURES)
  fields, call, apply = dict(num_heads=HEADS), dict(inputs_q=x), dict()
  if case == "arbitrary_mask":
    call["mask"] = jnp.asarray(np.random.default_rng(0).random((1, 1, LENGTH, LENGTH)) < 0.7)
    return fields, call, call, apply, False, "not a causal or sliding-window band"
  if case == "traced_mask":
    call["mask"] = nn.make_causal_mask(jnp.ones((BATCH, LENGTH)))
    return fields, call, call, apply, True, "traced array"
  if case == "dropout":
    fields.update(dropout_rate=0.5, deterministic=False)
    apply["rngs"] = {"dropout": jax.random.key(9)}
    return fields, call, call, apply, False, "attention dropout is active"
  if case == "sow_weights":
    call["sow_weights"] = True
    apply["mutable"] = ["intermediates"]
    return fields, call, call, apply, False, "sow_weights=True"
  if case == "custom_attention_fn":
    fields["attention_fn"] = functools.partial(nn.dot_product_attention, force_fp32_for_softmax=True)
    return fields, call, call, apply, False, "attention_fn is set"
  if case == "head_dim":
    fields["qkv_features"] = 24  # head_dim 6
    return fields, call, call, apply, False, "head_dim must be a multiple of 8"
  raise AssertionError(case)


@pytest.mark.parametrize(
    "case", ["arbitrary_mask", "traced_mask", "dropout", "sow_weights", "custom_attention_fn", "head_dim"]
)
def test_fallbacks_warn_with_the_reason_and_equal_flax(rng, case):
  fields, call, flax_call, apply, jit, reason = _fallback_case(rng, case)
  ours, theirs = FlashMultiHeadDotProductAttention(**fields), nn.MultiHeadDotProductAttention(**fields)
  params = theirs.init(jax.random.key(8), **{k: v for k, v in flax_call.items() if k != "sow_weights"})
  run = lambda layer, p, call: layer.apply(p, **call, **apply)
  if jit:
    run = jax.jit(run, static_argnums=0)
  with pytest.warns(jax_flash.FallbackWarning, match=reason):
    out = run(ours, params, call)
  _assert_trees_close(out, run(theirs, params, flax_call), case)


@pytest.mark.parametrize(
    "fields, error, message",
    [
        (dict(window_size=(-2, 0)), ValueError, "window_size"),
        (dict(window_size=(4, 1), causal=True), ValueError, "right bound must be -1 or 0 with causal=True"),
        (dict(causal=1), TypeError, "causal must be a Python bool"),
        (dict(num_kv_heads=3), ValueError, "num_kv_heads"),
    ],
)
def test_invalid_fields_raise_clearly(rng, fields, error, message):
  x = _inputs(rng, BATCH, LENGTH, FEATURES)
  with pytest.raises(error, match=f"FlashSelfAttention: .*{message}"):
    FlashSelfAttention(num_heads=HEADS, **fields).init(jax.random.key(0), x)


def test_a_decode_step_with_more_than_one_token_raises(rng):
  x = _inputs(rng, BATCH, LENGTH, FEATURES)
  decoder = FlashSelfAttention(num_heads=HEADS, causal=True, decode=True)
  variables = decoder.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="one token per call"):
    decoder.apply(variables, x[:, :2], mutable=["cache"])
