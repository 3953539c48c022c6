"""Batching rules: `vmap` of the forward and backward custom calls is one call, not a loop.

Each call is a `jax.custom_batching.custom_vmap` around the partitioned call of `jax_flash.sharding`. Its rule
receives the mapped operands with the mapped axis (size n) in front and makes one call on them:

  - Forward with only q mapped: n folds into the query heads, minor: heads (Hq n) = (k g n), still kv-head-major,
    so each kv head serves a group of g·n query heads and k, v are not copied. Copy-free when q's mapped axis
    sits right after its head axis (and o's, lse's are asked for there).
  - Otherwise (and always in the backward, whose dk, dv must come out per example): n stays a leading batch
    dimension of every operand (unmapped ones are broadcast). The partitioned call flattens its leading batch
    dimensions itself, so no order of n and B can be mixed up between fold and split, and a mesh may split
    either of them. Copy-free for operands mapped at axis 0.
The rule calls its own custom_vmap op, so under nested vmap each level applies its rule in turn.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap

from jax_flash import sharding
from jax_flash._config import AttentionConfig

# The head axis of q, o [..., S, H, D] and of lse [..., H, S], counted from the end.
_HEADS_DIM = -2


def _fold_into_heads(x: jax.Array) -> jax.Array:
  """x [n, ..., H, last] -> [..., (H n), last]."""
  x = jnp.moveaxis(x, 0, _HEADS_DIM)
  return x.reshape(*x.shape[:-3], x.shape[-3] * x.shape[-2], x.shape[-1])


def _split_from_heads(x: jax.Array, axis_size: int) -> jax.Array:
  """The inverse of `_fold_into_heads`: x [..., (H n), last] -> [n, ..., H, last]."""
  x = x.reshape(*x.shape[:-2], x.shape[-2] // axis_size, axis_size, x.shape[-1])
  return jnp.moveaxis(x, _HEADS_DIM, 0)


def _broadcast_unmapped(axis_size: int, mapped: list[bool], arrays) -> list[jax.Array]:
  """Every array with the mapped axis in front: the unmapped ones broadcast to it."""
  return [x if is_mapped else jnp.broadcast_to(x, (axis_size, *x.shape)) for x, is_mapped in zip(arrays, mapped)]


@functools.cache
def _forward_op(config: AttentionConfig) -> custom_vmap:
  @custom_vmap
  def op(q, k, v):
    return sharding.forward(q, k, v, config)

  @op.def_vmap
  def rule(axis_size, in_batched, q, k, v):
    _, k_mapped, v_mapped = in_batched
    if not (k_mapped or v_mapped):
      o, lse = op(_fold_into_heads(q), k, v)
      return (_split_from_heads(o, axis_size), _split_from_heads(lse, axis_size)), (True, True)
    return op(*_broadcast_unmapped(axis_size, in_batched, (q, k, v))), (True, True)

  return op


@functools.cache
def _backward_op(config: AttentionConfig) -> custom_vmap:
  @custom_vmap
  def op(dout, q, k, v, o, lse, dlse):
    return sharding.backward(dout, q, k, v, o, lse, dlse, config)

  @op.def_vmap
  def rule(axis_size, in_batched, *arrays):
    return op(*_broadcast_unmapped(axis_size, in_batched, arrays)), (True, True, True)

  return op


def forward(q: jax.Array, k: jax.Array, v: jax.Array, config: AttentionConfig) -> tuple[jax.Array, jax.Array]:
  """`jax_flash._ffi.forward` (o, lse) with batching and sharding rules."""
  return _forward_op(config)(q, k, v)


def backward(
    dout: jax.Array,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    o: jax.Array,
    lse: jax.Array,
    dlse: jax.Array,
    config: AttentionConfig,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`jax_flash._ffi.backward` (dq, dk, dv) with batching and sharding rules."""
  return _backward_op(config)(dout, q, k, v, o, lse, dlse)
