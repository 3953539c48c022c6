"""The implementations the benchmark compares: one table of peers, each with the limits it states.

A peer builds, for a shape, an attention function of (q, k, v) in [B, S, H, D]; `skip_reason` says why a peer cannot
run a (shape, dtype, pass): its module is absent or fails to import, it needs a GPU, or the shape, dtype or pass is
outside what it supports. To add a peer, add a `Peer` to PEERS.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from typing import Callable

import jax
import jax.numpy as jnp

from jax_flash.bench.grid import Shape

# An attention function of (q, k, v) in [B, S, H, D] layout for one shape's options.
Attention = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

OURS = "jax_flash"
BOTH_DTYPES = ("bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class Peer:
  name: str
  # The attention function for a shape; only called for shapes the peer supports.
  build: Callable[[Shape], Attention]
  # Module the peer needs; a peer whose module is missing or fails to import is skipped with that reason.
  module: str | None = None
  gpu_only: bool = True
  max_head_dim: int | None = None  # largest head dim the peer takes (None: any the grid has)
  dtypes: tuple[str, ...] = BOTH_DTYPES
  causal_backward: bool = True  # False: the peer has no backward for causal attention
  limits_source: str = ""  # where the stated limits come from, quoted in skip reasons

  def skip_reason(self, shape: Shape, dtype: str, pass_name: str, platform: str) -> str | None:
    """Why this peer does not run (shape, dtype, pass) on `platform`, or None when it does."""
    if self.gpu_only and platform != "gpu":
      return f"needs a GPU (platform is {platform})"
    missing = _import_failure(self.module)
    if missing is not None:
      return missing
    source = f" ({self.limits_source})" if self.limits_source else ""
    max_head_dim = self.max_head_dim
    if self.name == OURS:
      max_head_dim = _jax_flash_max_head_dim(platform)
    if max_head_dim is not None and shape.head_dim > max_head_dim:
      return f"head dim {shape.head_dim} > {max_head_dim}, the largest it supports{source}"
    if dtype not in self.dtypes:
      return f"{dtype} not supported, only {', '.join(self.dtypes)}{source}"
    if pass_name != "fwd" and shape.causal and not self.causal_backward:
      return f"no causal backward{source}"
    return None


@functools.cache
def _import_failure(module: str | None) -> str | None:
  if module is None:
    return None
  try:
    importlib.import_module(module)
  except ImportError as e:
    return f"{module} is not installed ({e})"
  except Exception as e:  # a module that is installed but broken here (e.g. wrong CUDA runtime) is skipped
    return f"{module} fails to import: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
  return None


def _jax_flash_max_head_dim(platform: str) -> int | None:
  """The CUDA kernels take head dims up to the largest built one; the CPU kernels take any."""
  if platform != "gpu":
    return None
  import jax_flash

  built = jax_flash.build_info()["cuda_head_dims"]
  return max(built) if built else 0


def _scale(shape: Shape) -> float:
  return 1.0 / math.sqrt(shape.head_dim)


def _jax_flash(shape: Shape) -> Attention:
  import jax_flash

  return lambda q, k, v: jax_flash.attention(q, k, v, causal=shape.causal)


def _jax_nn(implementation: str) -> Callable[[Shape], Attention]:
  def build(shape: Shape) -> Attention:
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=shape.causal,
                                                        implementation=implementation)

  return build


def _pallas_triton(shape: Shape) -> Attention:
  from jax.experimental.pallas.ops.gpu import attention as pallas_attention

  return lambda q, k, v: pallas_attention.mha(q, k, v, None, sm_scale=_scale(shape), causal=shape.causal)


# Mosaic GPU tiles: the sizes jax's own tests and benchmark use (64-row query blocks per consumer warpgroup,
# two stages of key/value tiles in flight); the backward blocks must all be given.
_MOSAIC_BLOCK_Q = 64
_MOSAIC_BLOCK_KV = 128
_MOSAIC_STAGES = 2
_MOSAIC_BACKWARD_BLOCK = 64


def _pallas_mosaic(shape: Shape) -> Attention:
  from jax.experimental.pallas.ops.gpu import attention_mgpu

  config = attention_mgpu.TuningConfig(
      block_q=_MOSAIC_BLOCK_Q, block_kv=_MOSAIC_BLOCK_KV, max_concurrent_steps=_MOSAIC_STAGES, causal=shape.causal,
      block_q_dkv=_MOSAIC_BACKWARD_BLOCK, block_kv_dkv=_MOSAIC_BACKWARD_BLOCK, block_q_dq=_MOSAIC_BACKWARD_BLOCK,
      block_kv_dq=_MOSAIC_BACKWARD_BLOCK)
  scale = _scale(shape)
  # The kernel does not scale the scores: scaling q is part of calling it (and of its time).
  return lambda q, k, v: attention_mgpu.attention((q * scale).astype(q.dtype), k, v, config)


def _flash_attn3_jax(shape: Shape) -> Attention:
  import flash_attn3_jax

  scale = _scale(shape)
  return lambda q, k, v: flash_attn3_jax.flash_mha(q, k, v, softmax_scale=scale, is_causal=shape.causal)


PEERS: tuple[Peer, ...] = (
    Peer(OURS, _jax_flash, gpu_only=False),
    Peer("cuDNN (jax.nn)", _jax_nn("cudnn")),
    Peer("flash_attn3_jax", _flash_attn3_jax, module="flash_attn3_jax", max_head_dim=128,
         limits_source="flash_attn3_jax 0.2.3 wheel builds head dims up to 128"),
    Peer("Pallas Mosaic GPU", _pallas_mosaic, module="jax.experimental.pallas.ops.gpu.attention_mgpu",
         max_head_dim=128, dtypes=("float16",), causal_backward=False,
         limits_source="jax.experimental.pallas.ops.gpu.attention_mgpu: float16 tiles, no causal backward"),
    Peer("Pallas Triton", _pallas_triton, module="jax.experimental.pallas.ops.gpu.attention", max_head_dim=128,
         limits_source="jax.experimental.pallas.ops.gpu.attention.mha: whole head dim per block"),
    Peer("XLA (jax.nn)", _jax_nn("xla"), gpu_only=False),
)


def by_name(names: list[str] | None) -> list[Peer]:
  """The peers named (all when names is empty or None); unknown names raise, listing the known ones."""
  if not names:
    return list(PEERS)
  known = {p.name: p for p in PEERS}
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"--peers: unknown peer(s) {unknown}; known peers: {list(known)}")
  return [known[n] for n in names]


def make_pass(attention: Attention, pass_name: str) -> Callable:
  """A jitted function of (q, k, v, dout) for one timed pass: 'fwd' returns o, 'fwd+bwd' returns (o, dq, dk, dv).
  'bwd' is timed as (fwd+bwd) - fwd by the caller."""
  if pass_name == "fwd":
    return jax.jit(lambda q, k, v, dout: attention(q, k, v))

  def forward_backward(q, k, v, dout):
    o, vjp = jax.vjp(attention, q, k, v)
    return (o, *vjp(dout))

  return jax.jit(forward_backward)


def random_inputs(shape: Shape, dtype, seed: int = 0) -> tuple[jax.Array, ...]:
  """Standard-normal q, k, v, dout in [B, S, H, D] (never zeros: they can time faster than real data)."""
  keys = jax.random.split(jax.random.key(seed), 4)
  dims = (shape.batch, shape.seqlen, shape.heads, shape.head_dim)
  return tuple(jax.random.normal(key, dims, jnp.float32).astype(dtype) for key in keys)
