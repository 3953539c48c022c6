"""`jax_flash.dot_product_attention`: jax.nn.dot_product_attention's signature and semantics on jax_flash's kernels."""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_flash._band import Band
from jax_flash._dispatch import Unsupported, plan_flash_call, warn_fallback
from jax_flash.attention import attention

IMPLEMENTATIONS = (None, "jax_flash", "xla", "cudnn")
_FALLBACK = "jax.nn.dot_product_attention (XLA, which materialises the [B, N, T, S] scores)"


def dot_product_attention(
    query: Any,
    key: Any,
    value: Any,
    bias: Any = None,
    mask: Any = None,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    query_seq_lengths: Any = None,
    key_value_seq_lengths: Any = None,
    local_window_size: int | tuple[int, int] | None = None,
    implementation: str | None = None,
    return_residual: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """`jax.nn.dot_product_attention`, computed by jax_flash's kernels whenever they give the same result.

  Same arguments, shapes and results as ``jax.nn.dot_product_attention``: query [B, T, N, H] (or [T, N, H]), key
  and value [B, S, K, H] (or [S, K, H]) with N a multiple of K (GQA/MQA), output shaped like query; with
  ``return_residual``, also the log-sum-exp of the scaled scores, [B, T, N] in key's dtype (no gradient).

  jax_flash's kernels run when there is no ``bias``, no ``query_seq_lengths`` / ``key_value_seq_lengths``, a static
  ``scale`` (or None), and the visible (query, key) pairs form one diagonal band: from ``is_causal``,
  ``local_window_size`` and a concrete ``mask`` that is the same for every batch entry and head (a traced mask's
  values are unknown at trace time). jax.nn aligns both to the top-left corner: ``is_causal`` keeps keys j <= i,
  ``local_window_size=(l, r)`` keeps i - l <= j <= i + r (an int w means (w, w)). jax_flash aligns causal masks
  to the bottom-right corner (j <= i + S - T), so the band is re-expressed there exactly: the same when T == S, a
  window with right bound T - S when T > S; with T < S a top-left causal band has no bottom-right equivalent and
  falls back. Rows that see no key fall back too (jax.nn gives them the mean of the values, jax_flash zeros).

  Args:
    query, key, value, bias, mask, scale, is_causal, query_seq_lengths, key_value_seq_lengths,
    local_window_size, return_residual: as in ``jax.nn.dot_product_attention``.
    implementation: None uses jax_flash when it can and otherwise jax.nn's XLA implementation, with a
      `jax_flash.FallbackWarning` that states why; ``"jax_flash"`` uses jax_flash or raises ValueError with the
      reason; ``"xla"`` and ``"cudnn"`` call jax.nn's implementations directly.

  Returns:
    The attention output, shaped like query in query's dtype; with ``return_residual``, (output, residual).
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}; got {implementation!r}")
  jax_nn_args = dict(
      scale=scale, is_causal=is_causal, query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths, local_window_size=local_window_size,
      return_residual=return_residual,
  )
  if implementation in ("xla", "cudnn"):
    return jax.nn.dot_product_attention(query, key, value, bias, mask, implementation=implementation, **jax_nn_args)

  query, key, value = (jnp.asarray(x) for x in (query, key, value))
  if mask is not None and not hasattr(mask, "dtype"):
    mask = np.asarray(mask)  # nested lists; arrays keep their place (host or device)
  window = _check_args(query, key, value, mask, is_causal, local_window_size, return_residual)
  # jax.nn accepts unbatched [T, N, H] inputs; jax_flash wants [B, T, N, H].
  q, k, v = (x if x.ndim == 4 else x[None] for x in (query, key, value))
  try:
    flash_kwargs = _plan(q, k, v, bias, mask, scale, is_causal, query_seq_lengths, key_value_seq_lengths, window)
  except Unsupported as e:
    if implementation == "jax_flash":
      raise ValueError(f"dot_product_attention(implementation='jax_flash') cannot compute this call: {e}") from None
    warn_fallback("jax_flash.dot_product_attention", _FALLBACK, str(e))
    return jax.nn.dot_product_attention(query, key, value, bias, mask, implementation=None, **jax_nn_args)

  if not return_residual:
    return attention(q, k, v, **flash_kwargs).reshape(query.shape)
  out, lse = attention(q, k, v, return_lse=True, **flash_kwargs)  # lse [B, N, T] float32
  residual = jax.lax.stop_gradient(jnp.swapaxes(lse, 1, 2).astype(key.dtype))  # [B, T, N], as jax.nn returns it
  return out.reshape(query.shape), residual.reshape(query.shape[:-1])


def _check_args(query, key, value, mask, is_causal, local_window_size, return_residual) -> tuple[int, int] | None:
  """Raises on arguments jax.nn.dot_product_attention rejects too; returns local_window_size as (left, right)."""
  if query.ndim not in (3, 4) or not query.ndim == key.ndim == value.ndim:
    raise ValueError(
        "query, key and value must all be rank 4, [B, T|S, N|K, H], or all rank 3, [T|S, N|K, H]; got shapes "
        f"query {query.shape}, key {key.shape}, value {value.shape}"
    )
  if key.shape != value.shape:
    raise ValueError(f"key and value must have the same shape; got key {key.shape}, value {value.shape}")
  if query.shape[:-3] != key.shape[:-3] or query.shape[-1] != key.shape[-1]:
    raise ValueError(
        f"query and key must have the same batch size and head dimension H; got query {query.shape}, key {key.shape}"
    )
  if query.shape[-2] % key.shape[-2] != 0:
    raise ValueError(
        f"query's heads N ({query.shape[-2]}) must be a multiple of key/value's heads K ({key.shape[-2]})"
    )
  if not query.dtype == key.dtype == value.dtype:
    raise TypeError(
        f"query, key and value must have the same dtype; got {query.dtype}, {key.dtype}, {value.dtype}"
    )
  if mask is not None:
    scores_shape = (key.shape[0] if key.ndim == 4 else 1, query.shape[-2], query.shape[-3], key.shape[-3])
    if np.dtype(mask.dtype) != np.dtype(bool):
      raise TypeError(f"mask must be a boolean array (True: attend); got dtype {mask.dtype}")
    if not _broadcasts_to(np.shape(mask), scores_shape):
      raise ValueError(f"mask must broadcast to [B, N, T, S] = {list(scores_shape)}; got shape {np.shape(mask)}")
  if not isinstance(is_causal, (bool, np.bool_)):
    raise TypeError(f"is_causal must be a Python bool; got {is_causal!r} ({type(is_causal).__name__})")
  if not isinstance(return_residual, (bool, np.bool_)):
    raise TypeError(f"return_residual must be a Python bool; got {return_residual!r}")
  if local_window_size is None:
    return None
  window = (local_window_size,) * 2 if isinstance(local_window_size, numbers.Integral) else local_window_size
  if (
      not isinstance(window, (tuple, list))
      or len(window) != 2
      or any(isinstance(w, (bool, np.bool_)) or not isinstance(w, numbers.Integral) for w in window)
  ):
    raise TypeError(
        f"local_window_size must be None, an int or a pair (left, right) of ints; got {local_window_size!r}"
    )
  return int(window[0]), int(window[1])


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
  try:
    return len(shape) <= len(target) and np.broadcast_shapes(shape, target) == target
  except ValueError:
    return False


def _plan(q, k, v, bias, mask, scale, is_causal, query_seq_lengths, key_value_seq_lengths, window) -> dict[str, Any]:
  """jax_flash.attention's keyword arguments for this call; raises Unsupported with the reason when it has none."""
  if bias is not None:
    raise Unsupported("a bias is given, and jax_flash adds no bias to the scores")
  if query_seq_lengths is not None or key_value_seq_lengths is not None:
    raise Unsupported("query_seq_lengths / key_value_seq_lengths are given, and jax_flash takes no per-example lengths")
  if isinstance(scale, jax.core.Tracer):
    raise Unsupported("scale is a traced value, and jax_flash needs a static Python float")
  band = Band()  # top-left coordinates, as jax.nn states is_causal and local_window_size
  if is_causal:
    band = band.intersect(Band(hi=0))
  if window is not None:
    band = band.intersect(Band(lo=-window[0], hi=window[1]))
  return plan_flash_call(q, k, v, band=band, mask=mask, softmax_scale=scale)
