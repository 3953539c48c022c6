"""Autoregressive decoding with Flax's key/value cache: one token per call, written at the cache index.

The cache holds keys and values [batch..., max_length, Hk, D]; a decode step's query [batch..., 1, Hq, D] attends
to the slots written so far. Flax's layers keep these semantics; the functions here are the shared arithmetic of
the linen and nnx layers (which store the cache differently).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jax_flash._config import UNBOUNDED


def check_decode_step(layer: str, query: jax.Array, key: jax.Array, cached_key: jax.Array) -> None:
  """Raises unless query and key hold one token each, shaped like one slot of the cache."""
  *batch_dims, _, heads_k, head_dim = cached_key.shape
  expected = (*batch_dims, 1, heads_k, head_dim)
  if key.shape != expected or query.shape[-3] != 1:
    raise ValueError(
        f"{layer}: a decode step takes one token per call; expected key shape {expected} (query length 1) for the "
        f"cache {cached_key.shape}, got query {query.shape}, key {key.shape}"
    )


def write_slot(cache: jax.Array, token: jax.Array, index: jax.Array) -> jax.Array:
  """The cache [batch..., max_length, Hk, D] with token [batch..., 1, Hk, D] written at slot ``index``."""
  zero = jnp.zeros((), index.dtype)
  starts = (zero,) * (cache.ndim - 3) + (index, zero, zero)
  return lax.dynamic_update_slice(cache, token, starts)


def visible_slots(index: jax.Array, cache_shape: tuple[int, ...], window_left: int) -> jax.Array:
  """[batch..., 1, 1, max_length] boolean: the slots the token at ``index`` sees (written ones, within the window)."""
  *batch_dims, max_length, _, _ = cache_shape
  slots = jnp.arange(max_length)
  visible = slots <= index
  if window_left != UNBOUNDED:
    visible &= slots >= index - window_left
  return jnp.broadcast_to(visible, (*batch_dims, 1, 1, max_length))
