"""jax_flash's Flax linen layers: a drop-in `FlashMultiHeadDotProductAttention` and `FlashSelfAttention`."""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from jax_flash._band import Band
from jax_flash._config import UNBOUNDED
from jax_flash.flax import _kv_cache
from jax_flash.flax._attend import attend, check_band_fields


class FlashMultiHeadDotProductAttention(nn.MultiHeadDotProductAttention):
  """`flax.linen.MultiHeadDotProductAttention` whose attention runs on jax_flash's kernels.

  A subclass with the same fields, call signature and parameter tree (query/key/value kernels [F, H, D] and biases
  [H, D], out kernel [H, D, F_out] and bias [F_out], query_ln/key_ln scales [D] with ``normalize_qk``), so Flax
  checkpoints load unchanged and give the same outputs. Shapes: inputs_q [batch..., T, F], inputs_k/inputs_v
  [batch..., S, F_kv], mask broadcastable to [batch..., H, T, S]; output [batch..., T, out_features or F].

  jax_flash computes the attention when there is no mask, or a concrete mask (not traced) that is a causal or
  sliding-window band, and the layer's own ``causal`` / ``window_size`` ask for such a band. Flax's own dense
  attention runs instead, with a `jax_flash.FallbackWarning` naming the reason, for: a traced or arbitrary mask,
  active attention dropout, ``sow_weights=True``, a custom ``attention_fn`` or custom attention einsums, a band
  that leaves query rows without keys (e.g. ``causal`` cross-attention with T > S: Flax gives such rows the mean
  of the values), or arguments jax_flash rejects (e.g. a head_dim that is not a multiple of 8). Decode steps
  (``decode=True`` after the cache exists) keep Flax's key/value cache semantics and attend densely: one query
  row per step.

  Fields beyond Flax's:
    causal: each query sees keys j <= i + S - T (bottom-right aligned; for self-attention, j <= i). A traced mask
      from ``nn.make_causal_mask`` inside ``jit`` cannot be recognised; set this instead.
    window_size: (left, right) sliding window on the same diagonal, -1 unbounded (jax_flash.attention's meaning).
    num_kv_heads: key/value heads (GQA/MQA; divides num_heads); key/value kernels become [F, num_kv_heads, D].
      None keeps Flax's layout (num_heads).
  """

  causal: bool = False
  window_size: tuple[int, int] = (UNBOUNDED, UNBOUNDED)
  num_kv_heads: int | None = None

  @nn.compact
  def __call__(
      self,
      inputs_q: jax.Array,
      inputs_k: jax.Array | None = None,
      inputs_v: jax.Array | None = None,
      *,
      inputs_kv: jax.Array | None = None,
      mask: jax.Array | None = None,
      deterministic: bool | None = None,
      dropout_rng: jax.Array | None = None,
      sow_weights: bool = False,
  ) -> jax.Array:
    """Flax's call: projects inputs to heads, attends, projects back. [batch..., T, F] -> [batch..., T, F_out]."""
    layer = type(self).__name__
    causal, window_size = check_band_fields(layer, self.causal, self.window_size)
    inputs_k, inputs_v = _key_value_inputs(inputs_q, inputs_k, inputs_v, inputs_kv)
    features = self.out_features or inputs_q.shape[-1]
    qkv_features = self.qkv_features or inputs_q.shape[-1]
    heads_k = self.num_heads if self.num_kv_heads is None else self.num_kv_heads
    if qkv_features % self.num_heads != 0 or heads_k < 1 or self.num_heads % heads_k != 0:
      raise ValueError(
          f"{layer}: qkv_features ({qkv_features}) must be a multiple of num_heads ({self.num_heads}), and "
          f"num_kv_heads ({self.num_kv_heads}) a divisor of num_heads"
      )
    head_dim = qkv_features // self.num_heads

    dense = functools.partial(
        nn.DenseGeneral, axis=-1, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init,
        bias_init=self.bias_init, use_bias=self.use_bias, precision=self.precision,
        dot_general=self.qkv_dot_general, dot_general_cls=self.qkv_dot_general_cls,
    )
    query = dense(features=(self.num_heads, head_dim), name="query")(inputs_q)  # [batch..., T, Hq, D]
    key = dense(features=(heads_k, head_dim), name="key")(inputs_k)  # [batch..., S, Hk, D]
    value = dense(features=(heads_k, head_dim), name="value")(inputs_v)  # [batch..., S, Hk, D]
    if self.normalize_qk:
      # Flax's qk normalisation (ViT-22B): a bias-free LayerNorm over head_dim.
      norm = functools.partial(nn.LayerNorm, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
      query = norm(name="query_ln")(query)
      key = norm(name="key_ln")(key)

    decoding = False
    if self.decode:
      decoding = self.has_variable("cache", "cached_key")  # the first (init) call only creates the cache
      cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
      cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, dtype=jnp.int32))
      if decoding:
        _kv_cache.check_decode_step(layer, query, key, cached_key.value)
        index = cache_index.value
        cached_key.value = _kv_cache.write_slot(cached_key.value, key, index)
        cached_value.value = _kv_cache.write_slot(cached_value.value, value, index)
        cache_index.value = index + 1
        key, value = cached_key.value, cached_value.value  # [batch..., max_length, Hk, D]
        slots = _kv_cache.visible_slots(index, key.shape, window_size[0])  # [batch..., 1, 1, max_length]
        mask = slots if mask is None else jnp.logical_and(mask, slots)

    if self.dropout_rate > 0.0:  # Flax asks for `deterministic` only when there is dropout
      deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
      if not deterministic and dropout_rng is None:
        dropout_rng = self.make_rng("dropout")
    else:
      deterministic = True
    # Created where Flax creates them: these factories may build modules with variables of their own.
    qk_einsum = self.qk_attn_weights_einsum_cls() if self.qk_attn_weights_einsum_cls else None
    weights_value_einsum = self.attn_weights_value_einsum_cls() if self.attn_weights_value_einsum_cls else None
    query, key, value = promote_dtype(query, key, value, dtype=self.dtype)

    def flax_attention(mask: jax.Array | None) -> jax.Array:
      group = self.num_heads // heads_k
      # Flax's attention functions want as many key/value heads as query heads: query head h reads kv head h // group.
      k, v = (key, value) if group == 1 else (jnp.repeat(x, group, axis=-2) for x in (key, value))
      kwargs = dict(
          mask=mask, dropout_rng=dropout_rng, dropout_rate=self.dropout_rate,
          broadcast_dropout=self.broadcast_dropout, deterministic=deterministic, dtype=self.dtype,
          precision=self.precision, force_fp32_for_softmax=self.force_fp32_for_softmax,
          qk_attn_weights_einsum=qk_einsum, attn_weights_value_einsum=weights_value_einsum,
      )
      accepted = inspect.signature(self.attention_fn).parameters  # as Flax does, for custom attention_fns
      kwargs = {name: arg for name, arg in kwargs.items() if name in accepted}
      if sow_weights:
        kwargs["module"] = self
      return self.attention_fn(query, k, v, **kwargs)

    if decoding:
      x = flax_attention(mask)  # one query row against the cache: scores [batch..., Hq, 1, max_length]
    else:
      band = Band.from_jax_flash(query.shape[-3], key.shape[-3], causal=causal, window_size=window_size)
      blocker = self._flax_only_reason(deterministic, sow_weights)
      x = attend(query, key, value, mask=mask, band=band, blocker=blocker, dense=flax_attention, layer=layer)

    return nn.DenseGeneral(
        features=features, axis=(-2, -1), kernel_init=self.out_kernel_init or self.kernel_init,
        bias_init=self.out_bias_init or self.bias_init, use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, precision=self.precision, dot_general=self.out_dot_general,
        dot_general_cls=self.out_dot_general_cls, name="out",
    )(x)

  def _flax_only_reason(self, deterministic: bool, sow_weights: bool) -> str | None:
    """Why this call must use Flax's attention whatever its mask, or None."""
    if self.attention_fn is not nn.dot_product_attention:
      return f"attention_fn is set ({getattr(self.attention_fn, '__name__', self.attention_fn)}), and is used as given"
    if self.qk_attn_weights_einsum_cls or self.attn_weights_value_einsum_cls:
      return "custom attention einsums are set (qk_attn_weights_einsum_cls / attn_weights_value_einsum_cls)"
    if sow_weights:
      return "sow_weights=True asks for the attention weights, which jax_flash never forms"
    if not deterministic:
      return f"attention dropout is active (dropout_rate={self.dropout_rate}), which jax_flash does not implement"
    return None


class FlashSelfAttention(FlashMultiHeadDotProductAttention):
  """Self-attention on jax_flash's kernels: x [batch..., T, F] -> [batch..., T, out_features or F].

  `FlashMultiHeadDotProductAttention` called on one input. The fields most used:
    num_heads: query heads Hq; qkv_features (default F) is split into Hq heads of head_dim D = qkv_features / Hq
      (jax_flash's kernels want D a multiple of 8, at most 256).
    num_kv_heads: key/value heads Hk (GQA/MQA; divides num_heads); None means Hk = Hq.
    causal: token i attends to tokens j <= i.
    window_size: (left, right): token i attends to i - left <= j <= i + right; -1 is unbounded.
    dtype / param_dtype: computation and parameter dtypes, as in Flax.
    normalize_qk: LayerNorm on queries and keys per head (parameters query_ln, key_ln).
    decode: key/value cache for generation: call once on [batch..., max_length, F] (e.g. in ``init``) to create
      the cache collection "cache", then one token [batch..., 1, F] per call with ``mutable=["cache"]``.
  Parameters: query [F, Hq, D], key and value [F, Hk, D] (kernels; biases [H, D] with use_bias), out [Hq, D, F_out].
  """

  @nn.compact
  def __call__(  # type: ignore[override]
      self,
      x: jax.Array,
      *,
      mask: jax.Array | None = None,
      deterministic: bool | None = None,
      dropout_rng: jax.Array | None = None,
      sow_weights: bool = False,
  ) -> jax.Array:
    """x [batch..., T, F]; mask (optional) broadcastable to [batch..., Hq, T, T]. Returns [batch..., T, F_out]."""
    return super().__call__(
        x, mask=mask, deterministic=deterministic, dropout_rng=dropout_rng, sow_weights=sow_weights
    )


def _key_value_inputs(
    inputs_q: jax.Array, inputs_k: Any, inputs_v: Any, inputs_kv: Any
) -> tuple[jax.Array, jax.Array]:
  """Flax's rules: keys default to the queries' inputs, values to the keys'; inputs_kv (deprecated) sets both."""
  if inputs_kv is not None:
    if inputs_k is not None or inputs_v is not None:
      raise ValueError("inputs_kv sets both keys and values: pass either inputs_kv, or inputs_k (and inputs_v)")
    warnings.warn("inputs_kv is deprecated in Flax; pass inputs_k (and inputs_v) instead", DeprecationWarning)
    return inputs_kv, inputs_kv
  if inputs_k is None:
    if inputs_v is not None:
      raise ValueError("inputs_k cannot be None when inputs_v is given; pass the same array as inputs_k")
    inputs_k = inputs_q
  return inputs_k, inputs_k if inputs_v is None else inputs_v
