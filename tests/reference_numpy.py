"""A float64 NumPy implementation of the attention contract, forward and backward, written independently of the
kernels and of `jax_flash.reference_attention` so that tests compare against something that shares no code."""

from __future__ import annotations

import numpy as np


def visible(seqlen_q: int, seqlen_k: int, causal: bool, window_size: tuple[int, int]) -> np.ndarray:
  """[Sq, Sk] True where query i sees key j (bottom-right aligned)."""
  left, right = window_size
  if causal:
    right = 0
  i = np.arange(seqlen_q)[:, None] + (seqlen_k - seqlen_q)
  j = np.arange(seqlen_k)[None, :]
  mask = np.ones((seqlen_q, seqlen_k), dtype=bool)
  if left >= 0:
    mask &= j >= i - left
  if right >= 0:
    mask &= j <= i + right
  return mask


def _expand_kv(x: np.ndarray, heads_q: int) -> np.ndarray:
  """[B, Sk, Hk, D] -> [B, Sk, Hq, D]: query head h reads kv head h // (Hq // Hk)."""
  return np.repeat(x, heads_q // x.shape[2], axis=2)


def _scores(q, k, scale, softcap):
  """Raw dot products x [B, H, Sq, Sk], the capped scores s and ds/dx."""
  x = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
  if softcap > 0:
    t = np.tanh(x / softcap)
    return softcap * t, (1.0 - t * t) * scale
  return x, np.full_like(x, scale)


def _softmax(q, k, causal, softmax_scale, window_size, softcap):
  """Probabilities p [B, H, Sq, Sk] (0 where masked), lse [B, H, Sq] and ds/dx, for k already expanded to Hq heads."""
  scale = 1.0 / np.sqrt(q.shape[-1]) if softmax_scale is None else softmax_scale
  s, ds_dx = _scores(q, k, scale, softcap)
  mask = visible(q.shape[1], k.shape[1], causal, window_size)
  s = np.where(mask, s, -np.inf)
  m = np.max(s, axis=-1, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  e = np.where(mask, np.exp(s - m), 0.0)
  l = e.sum(-1, keepdims=True)
  safe_l = np.where(l > 0, l, 1.0)
  lse = np.where(l > 0, m + np.log(safe_l), -np.inf)[..., 0]
  return e / safe_l, lse, ds_dx


def forward(q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1), softcap=0.0):
  """o [B, Sq, Hq, D] and lse [B, Hq, Sq] in float64."""
  q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
  k, v = _expand_kv(k, q.shape[2]), _expand_kv(v, q.shape[2])
  p, lse, _ = _softmax(q, k, causal, softmax_scale, window_size, softcap)
  return np.einsum("bhqk,bkhd->bqhd", p, v), lse


def backward(q, k, v, dout, dlse=None, *, causal=False, softmax_scale=None, window_size=(-1, -1), softcap=0.0):
  """dq, dk, dv in float64 for the cotangent dout of o (and dlse of lse); dk, dv summed over each GQA group."""
  q, k, v, dout = (np.asarray(a, dtype=np.float64) for a in (q, k, v, dout))
  heads_q, heads_k = q.shape[2], k.shape[2]
  ke, ve = _expand_kv(k, heads_q), _expand_kv(v, heads_q)
  p, _, ds_dx = _softmax(q, ke, causal, softmax_scale, window_size, softcap)
  o = np.einsum("bhqk,bkhd->bqhd", p, ve)
  dp = np.einsum("bqhd,bkhd->bhqk", dout, ve)
  delta = np.einsum("bqhd,bqhd->bhq", dout, o)[..., None]
  if dlse is not None:
    delta = delta - np.asarray(dlse, dtype=np.float64)[..., None]
  dx = p * (dp - delta) * ds_dx
  dq = np.einsum("bhqk,bkhd->bqhd", dx, ke)
  dk = np.einsum("bhqk,bqhd->bkhd", dx, q)
  dv = np.einsum("bhqk,bqhd->bkhd", p, dout)
  group = heads_q // heads_k
  fold = lambda g: g.reshape(g.shape[0], g.shape[1], heads_k, group, g.shape[3]).sum(3)
  return dq, fold(dk), fold(dv)
