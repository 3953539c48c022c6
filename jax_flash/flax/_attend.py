"""The attention step of jax_flash's Flax layers: jax_flash's kernels when they compute it exactly, otherwise
Flax's own dense attention (with a `jax_flash.FallbackWarning` that says why)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jax_flash._band import Band
from jax_flash._dispatch import Unsupported, plan_flash_call, warn_fallback
from jax_flash._validation import _check_static_bool, _check_window
from jax_flash.attention import attention

_FALLBACK = "Flax's dense attention (which materialises the [T, S] scores)"


def attend(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    mask: jax.Array | None,
    band: Band,
    blocker: str | None,
    dense: Callable[[jax.Array | None], jax.Array],
    layer: str,
) -> jax.Array:
  """Attention of query [batch..., T, Hq, D] over key, value [batch..., S, Hk, D] (one dtype): [batch..., T, Hq, D].

  Args:
    mask: None, or Flax's mask (True/nonzero: attend), broadcastable to [batch..., Hq, T, S].
    band: the layer's causal / window pattern (top-left coordinates, see jax_flash._band); the mask restricts it.
    blocker: why this call must take Flax's path whatever the mask (dropout, sow_weights, a custom attention_fn),
      or None.
    dense: Flax's attention of these query, key and value under a given mask; used when jax_flash cannot run.
    layer: the layer's name, for the warning.
  """
  if query.shape[:-3] != key.shape[:-3]:
    raise ValueError(
        f"{layer}: queries and keys must have the same batch dimensions; got query {query.shape}, key {key.shape}"
    )
  # jax_flash takes one batch axis: [B, L, H, D] with B the product of Flax's batch dimensions (1 if none).
  flat_q, flat_k, flat_v = (x.reshape((-1,) + x.shape[-3:]) for x in (query, key, value))
  try:
    if blocker is not None:
      raise Unsupported(blocker)
    flash_kwargs = plan_flash_call(flat_q, flat_k, flat_v, band=band, mask=mask)
  except Unsupported as e:
    warn_fallback(layer, _FALLBACK, str(e))
    return dense(_restrict(mask, band, query.shape[-3], key.shape[-3]))
  return attention(flat_q, flat_k, flat_v, **flash_kwargs).reshape(query.shape)


def _restrict(mask: jax.Array | None, band: Band, seqlen_q: int, seqlen_k: int) -> jax.Array | None:
  """Flax's mask with the band folded in (None when neither hides anything)."""
  band = band.normalized(seqlen_q, seqlen_k)
  if band.is_full:
    return mask
  visible = band.visible(seqlen_q, seqlen_k)  # [T, S]
  return visible if mask is None else jnp.logical_and(mask, visible)


def check_band_fields(layer: str, causal: object, window_size: object) -> tuple[bool, tuple[int, int]]:
  """Checks a layer's ``causal`` and ``window_size`` (jax_flash.attention's rules) and returns them normalised."""
  try:
    causal = _check_static_bool("causal", causal)
    window_size = _check_window(window_size)
  except (TypeError, ValueError) as e:
    raise type(e)(f"{layer}: {e}") from None
  if causal and window_size[1] > 0:
    raise ValueError(
        f"{layer}: window_size's right bound must be -1 or 0 with causal=True (causal already hides later keys); "
        f"got {window_size}"
    )
  return causal, window_size
