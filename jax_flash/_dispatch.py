"""Choosing jax_flash's kernels or a dense fallback, at trace time: one mechanism for `dot_product_attention` and
the Flax layers.

`plan_flash_call` returns the jax_flash.attention arguments that compute a call exactly, or raises `Unsupported`
with the reason. The caller then falls back (warning with `warn_fallback`) or, when the user asked for jax_flash,
raises. Nothing here runs a computation: masks are inspected only when they are concrete (not traced), on the
host (a concrete device array is copied there).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import jax
import numpy as np

from jax_flash._band import Band
from jax_flash.attention import attention


class FallbackWarning(UserWarning):
  """jax_flash could not compute an attention call with its kernels and used a dense fallback.

  Under Python's default warning filter it shows once per reason (and, for dot_product_attention, per call site).
  Silence it with ``warnings.filterwarnings("ignore", category=jax_flash.FallbackWarning)``.
  """


class Unsupported(Exception):
  """jax_flash's kernels cannot compute this call exactly; the message says why."""


def warn_fallback(api: str, fallback: str, reason: str, stacklevel: int = 2) -> None:
  warnings.warn(f"{api} uses {fallback}: {reason}", FallbackWarning, stacklevel=stacklevel + 1)


def mask_band(mask: Any, seqlen_q: int, seqlen_k: int) -> Band:
  """The band a boolean (or 0/1) mask broadcastable to [..., T, S] selects, the same for every batch entry and head.

  Raises Unsupported when the mask is traced (its values are unknown at trace time) or is no such band.
  """
  if isinstance(mask, jax.core.Tracer):
    raise Unsupported(
        f"the mask (shape {tuple(mask.shape)}) is a traced array, whose values are unknown at trace time; pass a "
        "causal or sliding-window mask as arguments instead (causal / window_size, or is_causal / local_window_size)"
    )
  visible = np.asarray(mask) != 0
  visible = np.broadcast_to(visible, visible.shape[:-2] + (seqlen_q, seqlen_k)).reshape(-1, seqlen_q, seqlen_k)
  if not np.all(visible == visible[:1]):
    raise Unsupported(f"the mask (shape {tuple(np.shape(mask))}) differs between batch entries or heads")
  band = Band.from_mask(visible[0])
  if band is None:
    raise Unsupported(
        f"the mask (shape {tuple(np.shape(mask))}) is not a causal or sliding-window band, the patterns jax_flash's "
        "kernels compute"
    )
  return band


def plan_flash_call(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    band: Band,
    mask: Any = None,
    softmax_scale: float | None = None,
) -> dict[str, Any]:
  """Keyword arguments of jax_flash.attention that compute this call exactly; raises Unsupported otherwise.

  Args:
    query: [B, T, Hq, D]; key, value: [B, S, Hk, D].
    band: the call's causal/window pattern in top-left coordinates (see jax_flash._band).
    mask: None, or a mask broadcastable to [..., T, S] that further restricts the band.
    softmax_scale: as jax_flash.attention's.
  """
  seqlen_q, seqlen_k = query.shape[1], key.shape[1]
  if mask is not None:
    band = band.intersect(mask_band(mask, seqlen_q, seqlen_k))
  band = band.normalized(seqlen_q, seqlen_k)
  if band.has_empty_rows(seqlen_q, seqlen_k):
    raise Unsupported(
        f"some query rows see no key ({band} over T={seqlen_q}, S={seqlen_k}); dense attention gives such rows the "
        "mean of the values, jax_flash gives zeros"
    )
  aligned = band.to_jax_flash(seqlen_q, seqlen_k)
  if aligned is None:
    raise Unsupported(
        f"the visible band ({band} over T={seqlen_q}, S={seqlen_k}) ends above jax_flash's bottom-right aligned "
        "diagonal (e.g. a top-left aligned causal mask with T < S)"
    )
  causal, window_size = aligned
  kwargs = dict(causal=causal, window_size=window_size, softmax_scale=softmax_scale)
  # Trace jax_flash.attention abstractly: its own argument checks (dtypes, head_dim, platform) decide, and
  # their message is the reason. Nothing runs.
  shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (query, key, value)]
  try:
    jax.eval_shape(functools.partial(attention, **kwargs), *shapes)
  except (TypeError, ValueError, RuntimeError, NotImplementedError) as e:
    raise Unsupported(str(e)) from None
  return kwargs
