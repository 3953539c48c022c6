"""Every invalid argument raises a clear exception at trace time that names it, what it got and what is allowed."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash

Q = jnp.zeros((2, 16, 4, 32), jnp.float32)
KV = jnp.zeros((2, 24, 2, 32), jnp.float32)


def _raises(exc, pattern, *args, **kwargs):
  with pytest.raises(exc, match=pattern):
    jax_flash.attention(*args, **kwargs)


def test_rank_other_than_four_is_rejected():
  _raises(ValueError, r"q must have rank 4.*got shape \(16, 4, 32\)", Q[0], KV, KV)
  _raises(ValueError, r"k must have rank 4", Q, KV[..., None], KV)


def test_non_array_is_rejected():
  _raises(TypeError, r"q must be a jax.Array.*got list", [[1.0]], KV, KV)


def test_integer_dtype_is_rejected():
  _raises(TypeError, r"q.dtype must be one of float32, float16, bfloat16; got int32", Q.astype(jnp.int32), KV, KV)


def test_float64_is_rejected_by_the_kernels():
  with jax.enable_x64(True):
    q = jnp.zeros((1, 4, 1, 8), jnp.float64)
    _raises(TypeError, r"q.dtype must be one of float32, float16, bfloat16; got float64", q, q, q)


def test_mixed_dtypes_are_rejected():
  _raises(TypeError, r"same dtype; got q float32, k bfloat16, v float32", Q, KV.astype(jnp.bfloat16), KV)


def test_k_and_v_shapes_must_match():
  _raises(ValueError, r"k and v must have the same shape.*k \(2, 24, 2, 32\), v \(2, 23, 2, 32\)", Q, KV, KV[:, :23])


def test_batch_mismatch_is_rejected():
  _raises(ValueError, r"batch size 2; got k batch 1", Q, KV[:1], KV[:1])


def test_head_dim_mismatch_is_rejected():
  _raises(ValueError, r"head_dim 32; got k head_dim 16", Q, KV[..., :16], KV[..., :16])


def test_query_heads_not_divisible_by_kv_heads_is_rejected():
  kv = jnp.zeros((2, 24, 3, 32), jnp.float32)
  _raises(ValueError, r"q's heads \(4\) must be a multiple of k/v's heads \(3\)", Q, kv, kv)


@pytest.mark.parametrize("head_dim", [12, 264])
def test_head_dim_outside_supported_set_is_rejected(head_dim):
  q = jnp.zeros((1, 4, 1, head_dim), jnp.float32)
  _raises(ValueError, rf"head_dim must be a multiple of 8 no larger than 256; got {head_dim}", q, q, q)


def test_empty_axis_is_rejected():
  q = jnp.zeros((1, 0, 1, 8), jnp.float32)
  _raises(ValueError, r"q must have seqlen >= 1; got shape \(1, 0, 1, 8\)", q, KV[:1, :, :1, :8], KV[:1, :, :1, :8])


def test_window_below_minus_one_is_rejected():
  _raises(ValueError, r"window_size \(left\) must be >= -1.*got -2", Q, KV, KV, window_size=(-2, 0))


def test_window_of_wrong_form_is_rejected():
  _raises(TypeError, r"window_size must be a pair", Q, KV, KV, window_size=5)
  _raises(TypeError, r"window_size \(right\) must be an int.*got 1.5", Q, KV, KV, window_size=(1, 1.5))


def test_causal_with_positive_right_window_is_rejected():
  _raises(ValueError, r"right bound must be -1 or 0 with causal=True.*got 3", Q, KV, KV, causal=True,
          window_size=(4, 3))


def test_non_bool_causal_is_rejected():
  _raises(TypeError, r"causal must be a Python bool; got 1", Q, KV, KV, causal=1)


def test_traced_softmax_scale_is_rejected():
  with pytest.raises(TypeError, match=r"softmax_scale must be a static Python float, not a traced value"):
    jax.jit(lambda s: jax_flash.attention(Q, KV, KV, softmax_scale=s))(0.5)


@pytest.mark.parametrize("scale, exc, pattern", [
    ("0.5", TypeError, r"softmax_scale must be a Python float.*got '0.5' \(str\)"),
    (True, TypeError, r"softmax_scale must be a Python float.*got True"),
    (float("nan"), ValueError, r"softmax_scale must be finite.*got nan"),
    (-1.0, ValueError, r"softmax_scale must be > 0.*got -1.0"),
    (0.0, ValueError, r"softmax_scale must be > 0.*got 0.0"),
])
def test_invalid_softmax_scale_is_rejected(scale, exc, pattern):
  _raises(exc, pattern, Q, KV, KV, softmax_scale=scale)


def test_negative_softcap_is_rejected():
  _raises(ValueError, r"softcap must be >= 0.*got -1.0", Q, KV, KV, softcap=-1.0)


def test_infinite_softcap_is_rejected():
  _raises(ValueError, r"softcap must be finite.*got inf", Q, KV, KV, softcap=float("inf"))


def test_non_bool_return_lse_is_rejected():
  _raises(TypeError, r"return_lse must be a Python bool; got 'yes'", Q, KV, KV, return_lse="yes")


def test_non_bool_deterministic_is_rejected():
  _raises(TypeError, r"deterministic must be a Python bool; got 1", Q, KV, KV, deterministic=1)


def test_numpy_scalars_are_accepted_as_static_arguments():
  o = jax_flash.attention(Q, KV, KV, softmax_scale=np.float32(0.25), window_size=(np.int64(3), -1),
                          causal=np.bool_(True))
  assert o.shape == Q.shape


def test_errors_name_the_argument_for_reference_attention_too():
  with pytest.raises(ValueError, match=re.escape("q must have rank 4")):
    jax_flash.reference_attention(Q[0], KV, KV)


def test_gpu_backend_without_cuda_kernels_raises_a_clear_error(monkeypatch):
  from jax_flash import _ffi
  monkeypatch.setattr(_ffi, "has_cuda", lambda: False)
  monkeypatch.setattr(_ffi.jax, "default_backend", lambda: "gpu")
  with pytest.raises(RuntimeError, match=r"built without CUDA kernels .* default backend is a GPU"):
    jax_flash.attention(Q, KV, KV)
