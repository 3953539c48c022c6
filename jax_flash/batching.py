"""Batching rules: `vmap` of the forward and backward custom calls is one call on a folded batch, not a loop.

Each call is a `jax.custom_batching.custom_vmap` around the partitioned call of `jax_flash.sharding`. Its rule
receives the mapped operands with the mapped axis (size n) in front, folds that axis into one the kernels already
loop over, makes one call, and splits the results back. The rule calls the custom_vmap op itself, so under nested
vmap the next level folds again.

  - Forward, only q mapped: fold n into the query heads, minor: heads (Hq n) = (k g n), still kv-head-major, so
    each kv head now serves a group of g·n query heads and k, v are not copied. Copy-free when q's mapped axis
    sits right after its head axis.
  - Otherwise (and always in the backward, whose dk, dv must come out per example): fold n into the batch, major:
    (n B), broadcasting the unmapped operands. Copy-free for operands mapped at axis 0.
Folding and splitting go through one pair of functions, so a fold (n B) is always split as (n B).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap

from jax_flash import sharding
from jax_flash._config import AttentionConfig

# Dimensions that mapped axes fold into: q, o [B, S, H, D]; lse [B, H, S].
_BATCH_DIM = 0
_QUERY_HEADS_DIM = 2
_STATS_HEADS_DIM = 1


def _fold(x: jax.Array, dim: int, *, mapped_major: bool) -> jax.Array:
  """x [n, ...] -> x without its leading mapped axis, whose dimension `dim` is now (n d) or (d n)."""
  axis_size = x.shape[0]
  x = jnp.moveaxis(x, 0, dim if mapped_major else dim + 1)
  return x.reshape(*x.shape[:dim], x.shape[dim] * x.shape[dim + 1], *x.shape[dim + 2:])


def _split(x: jax.Array, dim: int, axis_size: int, *, mapped_major: bool) -> jax.Array:
  """The inverse of `_fold`: x whose dimension `dim` is (n d) or (d n) -> x [n, ...]."""
  folded = x.shape[dim]
  pair = (axis_size, folded // axis_size) if mapped_major else (folded // axis_size, axis_size)
  x = x.reshape(*x.shape[:dim], *pair, *x.shape[dim + 1:])
  return jnp.moveaxis(x, dim if mapped_major else dim + 1, 0)


def _fold_batch(axis_size: int, batched: list[bool], arrays) -> list[jax.Array]:
  """Every array [n, B, ...] (unmapped ones broadcast) -> [(n B), ...]."""
  return [
      _fold(x if is_batched else jnp.broadcast_to(x, (axis_size, *x.shape)), _BATCH_DIM, mapped_major=True)
      for x, is_batched in zip(arrays, batched)
  ]


def _split_batch(axis_size: int, arrays) -> tuple[jax.Array, ...]:
  return tuple(_split(x, _BATCH_DIM, axis_size, mapped_major=True) for x in arrays)


@functools.cache
def _forward_op(config: AttentionConfig) -> custom_vmap:
  @custom_vmap
  def op(q, k, v):
    return sharding.forward(q, k, v, config)

  @op.def_vmap
  def rule(axis_size, in_batched, q, k, v):
    q_batched, k_batched, v_batched = in_batched
    if not (k_batched or v_batched):
      # q [n, B, Sq, Hq, D] -> [B, Sq, (Hq n), D]; k, v are shared by all n.
      o, lse = op(_fold(q, _QUERY_HEADS_DIM, mapped_major=False), k, v)
      return (
          (_split(o, _QUERY_HEADS_DIM, axis_size, mapped_major=False),
           _split(lse, _STATS_HEADS_DIM, axis_size, mapped_major=False)),
          (True, True),
      )
    o, lse = op(*_fold_batch(axis_size, in_batched, (q, k, v)))
    return _split_batch(axis_size, (o, lse)), (True, True)

  return op


@functools.cache
def _backward_op(config: AttentionConfig) -> custom_vmap:
  @custom_vmap
  def op(dout, q, k, v, o, lse, dlse):
    return sharding.backward(dout, q, k, v, o, lse, dlse, config)

  @op.def_vmap
  def rule(axis_size, in_batched, *arrays):
    grads = op(*_fold_batch(axis_size, in_batched, arrays))
    return _split_batch(axis_size, grads), (True, True, True)

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
