"""`jax_flash.attention`: exact attention through jax_flash's kernels."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jax_flash import _ffi
from jax_flash._op import flash_attention
from jax_flash._validation import check_attention_args


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    return_lse: bool = False,
    deterministic: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Exact scaled dot-product attention, softmax(q kᵀ · scale) v, without materialising the score matrix.

  Args:
    q: queries, [batch, seqlen_q, heads_q, head_dim].
    k: keys, [batch, seqlen_k, heads_k, head_dim]; heads_q must be a multiple of heads_k (GQA/MQA: query head h
      reads kv head h // (heads_q // heads_k)).
    v: values, same shape as k.
    causal: causal mask, bottom-right aligned when seqlen_q != seqlen_k: query i sees keys
      j <= i + seqlen_k - seqlen_q.
    softmax_scale: multiplies q·k; defaults to 1/sqrt(head_dim). A static Python float.
    window_size: (left, right) sliding window, bottom-right aligned: query i sees keys j with
      i + Sk - Sq - left <= j <= i + Sk - Sq + right; -1 means unbounded on that side.
    softcap: when > 0, each score s becomes softcap * tanh(s / softcap) (Gemma-style logit soft-capping).
    return_lse: also return the log-sum-exp of the scores.
    deterministic: make the gradients bitwise identical from run to run. The default (fast) GPU backward adds
      each key block's float32 contribution to dq in whatever order the blocks finish, so dq may differ in its
      last bits between identical runs (dk, dv and the forward are always reproducible); with True the blocks
      add in a fixed order, at some cost in speed. The CPU backward is deterministic either way.

  Returns:
    o, [batch, seqlen_q, heads_q, head_dim] in q's dtype; with ``return_lse``, also lse [batch, heads_q, seqlen_q]
    float32 (natural log). Rows that see no key get o = 0 and lse = -inf.

  dtypes: float32, float16 and bfloat16 on the CPU; float16 and bfloat16 on GPUs. head_dim: a multiple of 8 up
  to 256. Differentiable (``grad``) with respect to q, k and v, and through lse when it is returned.
  """
  config = check_attention_args(
      q, k, v, causal=causal, softmax_scale=softmax_scale, window_size=window_size, softcap=softcap
  )
  if not isinstance(return_lse, bool):
    raise TypeError(f"return_lse must be a Python bool; got {return_lse!r} ({type(return_lse).__name__})")
  if not isinstance(deterministic, bool):
    raise TypeError(f"deterministic must be a Python bool; got {deterministic!r} ({type(deterministic).__name__})")
  config = dataclasses.replace(config, deterministic=deterministic)
  _ffi.check_platform_supported(q.dtype, q.shape[-1])
  o, lse = flash_attention(q, k, v, config)
  return (o, lse) if return_lse else o
