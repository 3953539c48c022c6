"""Trace-time checks of the public arguments. Every message names the argument, what it got and what is allowed."""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_flash._config import UNBOUNDED, AttentionConfig

SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))
HEAD_DIM_MULTIPLE = 8
MAX_HEAD_DIM = 256

def _check_array(name: str, x: Any, dtypes: tuple[jnp.dtype, ...]) -> None:
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise TypeError(f"{name} must be a jax.Array or numpy array of shape [B, S, H, D]; got {type(x).__name__}")
  if x.ndim != 4:
    raise ValueError(f"{name} must have rank 4, [batch, seqlen, heads, head_dim]; got shape {tuple(x.shape)}")
  dtype = jnp.dtype(x.dtype)
  if dtype not in dtypes:
    names = ", ".join(d.name for d in dtypes)
    raise TypeError(f"{name}.dtype must be one of {names}; got {dtype.name}")
  for axis, size in zip(("batch", "seqlen", "heads", "head_dim"), x.shape):
    if size < 1:
      raise ValueError(f"{name} must have {axis} >= 1; got shape {tuple(x.shape)}")


def _check_static_bool(name: str, value: Any) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a Python bool; got {value!r} ({type(value).__name__})")
  return bool(value)


def _check_static_float(name: str, value: Any, *, allowed: str) -> float:
  if isinstance(value, jax.core.Tracer):
    raise TypeError(f"{name} must be a static Python float, not a traced value ({allowed}); got {value}")
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
    raise TypeError(f"{name} must be a Python float ({allowed}); got {value!r} ({type(value).__name__})")
  value = float(value)
  if not math.isfinite(value):
    raise ValueError(f"{name} must be finite ({allowed}); got {value}")
  return value


def _check_window(window_size: Any) -> tuple[int, int]:
  allowed = "a pair (left, right) of ints >= -1, where -1 means unbounded"
  if not isinstance(window_size, (tuple, list)) or len(window_size) != 2:
    raise TypeError(f"window_size must be {allowed}; got {window_size!r}")
  bounds = []
  for side, bound in zip(("left", "right"), window_size):
    if isinstance(bound, (bool, np.bool_)) or not isinstance(bound, numbers.Integral):
      raise TypeError(f"window_size ({side}) must be an int (>= -1); got {bound!r} ({type(bound).__name__})")
    if bound < UNBOUNDED:
      raise ValueError(f"window_size ({side}) must be >= -1 (-1 is unbounded); got {int(bound)}")
    bounds.append(int(bound))
  return bounds[0], bounds[1]


def check_attention_args(
    q: Any,
    k: Any,
    v: Any,
    *,
    causal: Any,
    softmax_scale: Any,
    window_size: Any,
    softcap: Any,
    dtypes: tuple[jnp.dtype, ...] = SUPPORTED_DTYPES,
) -> AttentionConfig:
  """Validates the arguments of `jax_flash.attention` and returns the static configuration of the call."""
  for name, x in (("q", q), ("k", k), ("v", v)):
    _check_array(name, x, dtypes)
  if not (q.dtype == k.dtype == v.dtype):
    raise TypeError(
        f"q, k and v must have the same dtype; got q {jnp.dtype(q.dtype).name}, k {jnp.dtype(k.dtype).name}, "
        f"v {jnp.dtype(v.dtype).name}"
    )
  if tuple(k.shape) != tuple(v.shape):
    raise ValueError(f"k and v must have the same shape [B, Sk, Hk, D]; got k {tuple(k.shape)}, v {tuple(v.shape)}")
  batch, _, heads_q, head_dim = q.shape
  if k.shape[0] != batch:
    raise ValueError(f"k and v must have q's batch size {batch}; got k batch {k.shape[0]}")
  if k.shape[3] != head_dim:
    raise ValueError(f"k and v must have q's head_dim {head_dim}; got k head_dim {k.shape[3]}")
  if heads_q % k.shape[2] != 0:
    raise ValueError(
        f"q's heads ({heads_q}) must be a multiple of k/v's heads ({k.shape[2]}) for grouped-query attention"
    )
  if head_dim % HEAD_DIM_MULTIPLE != 0 or head_dim > MAX_HEAD_DIM:
    raise ValueError(
        f"head_dim must be a multiple of {HEAD_DIM_MULTIPLE} no larger than {MAX_HEAD_DIM}; got {head_dim}"
    )

  causal = _check_static_bool("causal", causal)
  if softmax_scale is None:
    scale = 1.0 / math.sqrt(head_dim)
  else:
    scale = _check_static_float("softmax_scale", softmax_scale, allowed="finite and > 0, or None for 1/sqrt(D)")
    if scale <= 0:
      raise ValueError(f"softmax_scale must be > 0 (or None for 1/sqrt(head_dim)); got {scale}")
  left, right = _check_window(window_size)
  if causal and right > 0:
    raise ValueError(
        f"window_size right bound must be -1 or 0 with causal=True (causal already hides later keys); got {right}"
    )
  cap = _check_static_float("softcap", softcap, allowed="finite and >= 0; 0 disables it")
  if cap < 0:
    raise ValueError(f"softcap must be >= 0 (0 disables it); got {cap}")
  return AttentionConfig(softmax_scale=scale, causal=causal, window_left=left, window_right=right, softcap=cap)
