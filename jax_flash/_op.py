"""The differentiable attention op: one `jax.custom_vjp` around the forward and backward custom calls.

The calls go through `jax_flash.batching` (vmap rules) and `jax_flash.sharding` (partitioning rules) to `_ffi`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jax_flash import batching
from jax_flash._config import AttentionConfig


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, config: AttentionConfig) -> tuple[jax.Array, jax.Array]:
  """(o [B, Sq, Hq, D], lse [B, Hq, Sq] float32) for q [B, Sq, Hq, D], k, v [B, Sk, Hk, D]; arguments checked."""
  return batching.forward(q, k, v, config)


def _forward(q, k, v, config):
  o, lse = batching.forward(q, k, v, config)
  return (o, lse), (q, k, v, o, lse)


def _backward(config, residuals, cotangents):
  q, k, v, o, lse = residuals
  dout, dlse = cotangents
  # The lse cotangent enters the backward kernels through delta = rowsum(dout * o) - dlse.
  dq, dk, dv = batching.backward(dout.astype(q.dtype), q, k, v, o, lse, dlse.astype(jnp.float32), config)
  return dq, dk, dv


flash_attention.defvjp(_forward, _backward)
