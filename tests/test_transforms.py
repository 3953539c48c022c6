"""jax_flash.attention composes with jit, grad, value_and_grad and jax.checkpoint, and lowers to our custom calls."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import jax_flash
from conftest import assert_close, random_qkv


def _loss(q, k, v):
  return jnp.sum(jnp.sin(jax_flash.attention(q, k, v, causal=True)))


def _reference_loss(q, k, v):
  return jnp.sum(jnp.sin(jax_flash.reference_attention(q, k, v, causal=True)))


def test_lowered_forward_contains_the_forward_custom_call(rng):
  q, k, v = random_qkv(rng, 1, 16, 16, 2, 2, 32, jnp.float32)
  text = jax.jit(functools.partial(jax_flash.attention, causal=True)).lower(q, k, v).as_text()
  assert "jax_flash_fwd" in text
  assert "jax_flash_bwd" not in text


def test_lowered_gradient_contains_both_custom_calls_and_no_dense_scores(rng):
  q, k, v = random_qkv(rng, 1, 256, 256, 2, 2, 32, jnp.float32)
  lowered = jax.jit(jax.grad(_loss, argnums=(0, 1, 2))).lower(q, k, v)
  text = lowered.as_text()
  assert "jax_flash_fwd" in text and "jax_flash_bwd" in text
  assert "256x256" not in text, "no [Sq, Sk] score matrix appears in the program"


def test_grad_and_value_and_grad_match_reference(rng):
  q, k, v = random_qkv(rng, 2, 40, 40, 4, 2, 16, jnp.float32)
  value, grads = jax.jit(jax.value_and_grad(_loss, argnums=(0, 1, 2)))(q, k, v)
  ref_value, ref_grads = jax.value_and_grad(_reference_loss, argnums=(0, 1, 2))(q, k, v)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  for got, want in zip(grads, ref_grads):
    assert_close(got, want, jnp.float32, "grad")
  single = jax.grad(_loss)(q, k, v)
  assert_close(single, ref_grads[0], jnp.float32, "grad wrt q only")


def test_checkpoint_recomputes_through_the_custom_call(rng):
  q, k, v = random_qkv(rng, 1, 32, 32, 2, 1, 16, jnp.float32)
  remat = jax.checkpoint(_loss)
  grads = jax.jit(jax.grad(remat, argnums=(0, 1, 2)))(q, k, v)
  plain = jax.grad(_loss, argnums=(0, 1, 2))(q, k, v)
  for got, want in zip(grads, plain):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  text = jax.jit(jax.grad(remat)).lower(q, k, v).as_text()
  assert text.count("jax_flash_fwd") >= 1 and "jax_flash_bwd" in text


def test_gradient_flows_through_lse(rng):
  q, k, v = random_qkv(rng, 1, 24, 30, 2, 2, 16, jnp.float32)
  lse_loss = lambda q, k, v: jnp.sum(jax_flash.attention(q, k, v, return_lse=True)[1])
  ref_loss = lambda q, k, v: jnp.sum(jax_flash.reference_attention(q, k, v, return_lse=True)[1])
  for got, want in zip(jax.grad(lse_loss, argnums=(0, 1, 2))(q, k, v),
                       jax.grad(ref_loss, argnums=(0, 1, 2))(q, k, v)):
    assert_close(got, want, jnp.float32, "grad of lse")


def test_second_call_with_other_static_arguments_recompiles_correctly(rng):
  q, k, v = random_qkv(rng, 1, 20, 20, 2, 2, 16, jnp.float32)
  f = jax.jit(jax_flash.attention, static_argnames=("causal", "softcap"))
  assert not np.allclose(f(q, k, v, causal=True), f(q, k, v, causal=False))
  assert_close(f(q, k, v, softcap=1.0), jax_flash.reference_attention(q, k, v, softcap=1.0), jnp.float32, "softcap")


def test_vmap_gives_per_example_results(rng):
  q, k, v = random_qkv(rng, 3, 20, 20, 2, 2, 16, jnp.float32)
  # vmap over the batch axis with a unit batch inside: each example equals the unbatched call.
  batched = jax.vmap(lambda q, k, v: jax_flash.attention(q[None], k[None], v[None], causal=True)[0])(q, k, v)
  assert_close(batched, jax_flash.reference_attention(q, k, v, causal=True), jnp.float32, "vmap")
