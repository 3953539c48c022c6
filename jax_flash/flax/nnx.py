"""jax_flash's Flax nnx layers: a drop-in `FlashMultiHeadAttention` and `FlashSelfAttention`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from jax_flash._band import Band
from jax_flash._config import UNBOUNDED
from jax_flash.flax import _kv_cache
from jax_flash.flax._attend import attend, check_band_fields


class FlashMultiHeadAttention(nnx.MultiHeadAttention):
  """`flax.nnx.MultiHeadAttention` whose attention runs on jax_flash's kernels.

  A subclass: the same constructor, call signature, submodules and parameters (query [F, Hq, D], key/value
  [F_kv, Hk, D], out [Hq, D, F_out], optional query_ln/key_ln), so nnx states load unchanged and give the same
  outputs. Shapes: inputs_q [batch..., T, F], inputs_k/inputs_v [batch..., S, F_kv], mask broadcastable to
  [batch..., Hq, T, S]; output [batch..., T, out_features].

  jax_flash computes the attention when there is no mask, or a concrete mask (not traced) that is a causal or
  sliding-window band, combined with ``is_causal`` (nnx's meaning: ``jnp.tril``, top-left aligned) and the
  constructor's ``causal`` / ``window_size``. Flax's dense attention runs instead, with a
  `jax_flash.FallbackWarning` naming the reason, for a traced or arbitrary mask, active attention dropout,
  ``sow_weights=True``, a custom ``attention_fn``, ``input_positions`` (which go to attention_fn), a band that
  leaves query rows without keys (Flax gives them the mean of the values), or arguments jax_flash rejects (e.g.
  a head_dim that is not a multiple of 8). Decode steps keep nnx's cache semantics (``init_cache`` first) and
  attend densely, one query row per step.

  Args beyond nnx's (keyword-only):
    causal: each query sees keys j <= i + S - T (bottom-right aligned; for self-attention, j <= i).
    window_size: (left, right) sliding window on the same diagonal, -1 unbounded (jax_flash.attention's meaning).
  """

  def __init__(
      self, *args: Any, causal: bool = False, window_size: tuple[int, int] = (UNBOUNDED, UNBOUNDED), **kwargs: Any
  ):
    super().__init__(*args, **kwargs)
    self.causal, self.window_size = check_band_fields(type(self).__name__, causal, window_size)

  def __call__(
      self,
      inputs_q: jax.Array,
      inputs_k: jax.Array | None = None,
      inputs_v: jax.Array | None = None,
      *,
      mask: jax.Array | None = None,
      deterministic: bool | None = None,
      rngs: nnx.Rngs | nnx.RngStream | None = None,
      sow_weights: bool = False,
      decode: bool | None = None,
      is_causal: bool = False,
      out_sharding: Any = None,
      qkv_sharding: Any = None,
      input_positions: jax.Array | None = None,
  ) -> jax.Array:
    """nnx's call: projects inputs to heads, attends, projects back. [batch..., T, F] -> [batch..., T, F_out]."""
    layer = type(self).__name__
    if rngs is None:
      rngs = self.rngs
    elif isinstance(rngs, nnx.Rngs):
      rngs = rngs.dropout
    if inputs_k is None:
      if inputs_v is not None:
        raise ValueError(f"{layer}: inputs_k cannot be None when inputs_v is given; pass the same array as inputs_k")
      inputs_k = inputs_q
    if inputs_v is None:
      inputs_v = inputs_k
    if inputs_q.shape[-1] != self.in_features:
      raise ValueError(f"{layer}: inputs_q has {inputs_q.shape[-1]} features; the layer expects {self.in_features}")

    query = self.query(inputs_q, out_sharding=qkv_sharding)  # [batch..., T, Hq, D]
    key = self.key(inputs_k, out_sharding=qkv_sharding)  # [batch..., S, Hk, D]
    value = self.value(inputs_v, out_sharding=qkv_sharding)  # [batch..., S, Hk, D]
    if self.normalize_qk:
      query = self.query_ln(query)
      key = self.key_ln(key)

    decode = _first_set(layer, "decode", decode, self.decode)
    if decode:
      if self.cached_key is None or self.cached_value is None or self.cache_index is None:
        raise ValueError(f"{layer}: decode=True needs the key/value cache; call init_cache(input_shape) first")
      _kv_cache.check_decode_step(layer, query, key, self.cached_key[...])
      index = self.cache_index[...]
      self.cached_key[...] = _kv_cache.write_slot(self.cached_key[...], key, index)
      self.cached_value[...] = _kv_cache.write_slot(self.cached_value[...], value, index)
      self.cache_index[...] = index + 1
      key, value = self.cached_key[...], self.cached_value[...]  # [batch..., max_length, Hk, D]
      slots = _kv_cache.visible_slots(index, key.shape, self.window_size[0])  # [batch..., 1, 1, max_length]
      mask = slots if mask is None else jnp.logical_and(mask, slots)

    dropout_rng = None
    if self.dropout_rate > 0.0:  # nnx asks for `deterministic` only when there is dropout
      deterministic = _first_set(layer, "deterministic", deterministic, self.deterministic)
      if not deterministic:
        if rngs is None:
          raise ValueError(f"{layer}: dropout needs rngs; pass rngs= to the call (the layer keeps none)")
        dropout_rng = rngs()
    else:
      deterministic = True
    query, key, value = dtypes.promote_dtype((query, key, value), dtype=self.dtype)

    def flax_attention(mask: jax.Array | None) -> jax.Array:
      # Causal and window bounds arrive folded into the mask, hence is_causal=False.
      extra = {} if input_positions is None else {"input_positions": input_positions}
      return self.attention_fn(
          query, key, value, mask=mask, dropout_rng=dropout_rng, dropout_rate=self.dropout_rate,
          broadcast_dropout=self.broadcast_dropout, deterministic=deterministic, dtype=self.dtype,
          precision=self.precision, module=self if sow_weights else None, is_causal=False, **extra,
      )

    if decode:
      x = flax_attention(mask)  # one query row against the cache: scores [batch..., Hq, 1, max_length]
    else:
      band = Band.from_jax_flash(query.shape[-3], key.shape[-3], causal=self.causal, window_size=self.window_size)
      if is_causal:
        band = band.intersect(Band(hi=0))  # nnx's is_causal is jnp.tril: key j <= query i, top-left aligned
      blocker = self._flax_only_reason(deterministic, sow_weights, input_positions)
      x = attend(query, key, value, mask=mask, band=band, blocker=blocker, dense=flax_attention, layer=layer)
    return self.out(x, out_sharding=out_sharding)

  def _flax_only_reason(self, deterministic: bool, sow_weights: bool, input_positions: Any) -> str | None:
    """Why this call must use Flax's attention whatever its mask, or None."""
    if self.attention_fn is not nnx.dot_product_attention:
      return f"attention_fn is set ({getattr(self.attention_fn, '__name__', self.attention_fn)}), and is used as given"
    if input_positions is not None:
      return "input_positions are given; they are for attention_fn, which is used as given"
    if sow_weights:
      return "sow_weights=True asks for the attention weights, which jax_flash never forms"
    if not deterministic:
      return f"attention dropout is active (dropout_rate={self.dropout_rate}), which jax_flash does not implement"
    return None


class FlashSelfAttention(FlashMultiHeadAttention):
  """Self-attention on jax_flash's kernels: x [batch..., T, in_features] -> [batch..., T, out_features].

  `FlashMultiHeadAttention` called on one input, with ``decode`` defaulting to False.

  Args:
    num_heads: query heads Hq; qkv_features (default in_features) is split into Hq heads of head_dim
      D = qkv_features / Hq (jax_flash's kernels want D a multiple of 8, at most 256).
    in_features: F, the last axis of x.
    num_kv_heads: key/value heads Hk (GQA/MQA; divides num_heads); None means Hk = Hq.
    qkv_features, out_features: as nnx.MultiHeadAttention's (out_features defaults to in_features).
    causal: token i attends to tokens j <= i.
    window_size: (left, right): token i attends to i - left <= j <= i + right; -1 is unbounded.
    dtype / param_dtype: computation and parameter dtypes.
    normalize_qk: LayerNorm on queries and keys per head (submodules query_ln, key_ln).
    decode: generation with a key/value cache: ``init_cache((batch, max_length, in_features), dtype)`` first,
      then one token [batch, 1, in_features] per call.
    rngs: nnx.Rngs for the parameters (and dropout, when dropout_rate > 0).
    **kwargs: the rest of nnx.MultiHeadAttention's arguments (dropout_rate, use_bias, kernel_init, ...).
  Parameters: query [F, Hq, D], key and value [F, Hk, D] (kernels; biases [H, D] with use_bias), out [Hq, D, F_out].
  """

  def __init__(
      self,
      num_heads: int,
      in_features: int,
      *,
      num_kv_heads: int | None = None,
      qkv_features: int | None = None,
      out_features: int | None = None,
      causal: bool = False,
      window_size: tuple[int, int] = (UNBOUNDED, UNBOUNDED),
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      normalize_qk: bool = False,
      decode: bool = False,
      rngs: nnx.Rngs,
      **kwargs: Any,
  ):
    super().__init__(
        num_heads, in_features, qkv_features, out_features, num_kv_heads, causal=causal, window_size=window_size,
        dtype=dtype, param_dtype=param_dtype, normalize_qk=normalize_qk, decode=decode, rngs=rngs, **kwargs,
    )

  def __call__(  # type: ignore[override]
      self,
      x: jax.Array,
      *,
      mask: jax.Array | None = None,
      deterministic: bool | None = None,
      rngs: nnx.Rngs | nnx.RngStream | None = None,
      decode: bool | None = None,
      sow_weights: bool = False,
  ) -> jax.Array:
    """x [batch..., T, F]; mask (optional) broadcastable to [batch..., Hq, T, T]. Returns [batch..., T, F_out]."""
    return super().__call__(
        x, mask=mask, deterministic=deterministic, rngs=rngs, decode=decode, sow_weights=sow_weights
    )


def _first_set(layer: str, name: str, call_value: bool | None, layer_value: bool | None) -> bool:
  """The call's setting, else the layer's; nnx requires one of them."""
  value = layer_value if call_value is None else call_value
  if value is None:
    raise ValueError(f"{layer}: pass {name}= to the call or to the constructor")
  return value
