"""`jax_flash.reference_attention`: the jax_flash contract in plain JAX, exact (it materialises the scores).

For tests and for checking results; it needs memory quadratic in sequence length. It also accepts float64 inputs
(with ``jax_enable_x64``), which makes it a high-precision reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_flash._config import UNBOUNDED, AttentionConfig
from jax_flash._validation import SUPPORTED_DTYPES, check_attention_args

_REFERENCE_DTYPES = SUPPORTED_DTYPES + (jnp.dtype(jnp.float64),)


def visible_mask(seqlen_q: int, seqlen_k: int, config: AttentionConfig) -> jax.Array:
  """[Sq, Sk] boolean: True where query i sees key j (causal and window bounds, bottom-right aligned)."""
  rows = jnp.arange(seqlen_q)[:, None]
  cols = jnp.arange(seqlen_k)[None, :]
  diagonal = rows + (seqlen_k - seqlen_q + config.diagonal_offset)
  visible = jnp.ones((seqlen_q, seqlen_k), dtype=bool)
  if config.window_left != UNBOUNDED:
    visible &= cols >= diagonal - config.window_left
  right = config.effective_window_right
  if right != UNBOUNDED:
    visible &= cols <= diagonal + right
  return visible


def reference_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    return_lse: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Same arguments, results and contract as `jax_flash.attention`, computed densely in float32 (or float64)."""
  config = check_attention_args(
      q, k, v, causal=causal, softmax_scale=softmax_scale, window_size=window_size, softcap=softcap,
      dtypes=_REFERENCE_DTYPES,
  )
  batch, seqlen_q, heads_q, head_dim = q.shape
  _, seqlen_k, heads_k, _ = k.shape
  group = heads_q // heads_k
  compute = jnp.promote_types(q.dtype, jnp.float32)

  # Query head h = kv_head * group + g reads kv head kv_head.
  qg = q.astype(compute).reshape(batch, seqlen_q, heads_k, group, head_dim)
  scores = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k.astype(compute)) * config.softmax_scale
  if config.softcap > 0:
    scores = config.softcap * jnp.tanh(scores / config.softcap)
  visible = visible_mask(seqlen_q, seqlen_k, config)
  scores = jnp.where(visible, scores, -jnp.inf)

  row_max = jnp.max(scores, axis=-1, keepdims=True)
  # Rows that see no key have max -inf: subtract 0 instead so their probabilities are 0, not NaN.
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  probs = jnp.where(visible, jnp.exp(scores - jax.lax.stop_gradient(row_max)), 0.0)
  row_sum = jnp.sum(probs, axis=-1, keepdims=True)
  nonempty = row_sum > 0
  safe_sum = jnp.where(nonempty, row_sum, 1.0)
  o = jnp.einsum("bhgqk,bkhd->bqhgd", probs / safe_sum, v.astype(compute))
  o = o.reshape(batch, seqlen_q, heads_q, head_dim).astype(q.dtype)
  if not return_lse:
    return o
  lse = jnp.where(nonempty, jax.lax.stop_gradient(row_max) + jnp.log(safe_sum), -jnp.inf)
  lse = lse[..., 0].reshape(batch, heads_q, seqlen_q)
  return o, lse.astype(jnp.promote_types(compute, jnp.float32))
