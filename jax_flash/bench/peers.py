"""The implementations the benchmark compares: one table of peers. Each builds, for a shape and a pass, a jitted
function and its arguments, or says why it cannot run. To add a peer (flash_attn3_jax, Pallas, ...), add a `Peer`
to PEERS."""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Callable

import jax
import jax.numpy as jnp

from jax_flash.bench.grid import Shape

# An attention function of (q, k, v) in [B, S, H, D] layout for one shape's options.
Attention = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Peer:
  name: str
  # Returns the attention function for the shape, or a string saying why the peer cannot run it.
  build: Callable[[Shape], Attention | str]
  # Python module the peer needs; a peer whose module is missing is skipped with that reason.
  module: str | None = None

  def unavailable_reason(self) -> str | None:
    if self.module is not None and importlib.util.find_spec(self.module) is None:
      return f"{self.module} is not installed"
    return None


def _jax_flash(shape: Shape) -> Attention | str:
  import jax_flash

  built = jax_flash.build_info()["cuda_head_dims"]
  if not built or shape.head_dim > max(built):
    return f"head dim {shape.head_dim} not in this build (built: {built})"
  return lambda q, k, v: jax_flash.attention(q, k, v, causal=shape.causal)


def _jax_nn(implementation: str) -> Callable[[Shape], Attention | str]:
  def build(shape: Shape) -> Attention | str:
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=shape.causal,
                                                        implementation=implementation)

  return build


PEERS: tuple[Peer, ...] = (
    Peer("jax_flash", _jax_flash),
    Peer("cuDNN (jax.nn)", _jax_nn("cudnn")),
    Peer("XLA (jax.nn)", _jax_nn("xla")),
)


def make_pass(attention: Attention, pass_name: str) -> Callable:
  """A jitted function of (q, k, v, dout) for one pass. 'bwd' is timed as fwd+bwd minus fwd by the caller."""
  if pass_name == "fwd":
    return jax.jit(lambda q, k, v, dout: attention(q, k, v))

  def forward_backward(q, k, v, dout):
    _, vjp = jax.vjp(attention, q, k, v)
    return vjp(dout)

  return jax.jit(forward_backward)


def random_inputs(shape: Shape, dtype, seed: int = 0) -> tuple[jax.Array, ...]:
  """Standard-normal q, k, v, dout in [B, S, H, D] (never zeros: they can time faster than real data)."""
  keys = jax.random.split(jax.random.key(seed), 4)
  dims = (shape.batch, shape.seqlen, shape.heads, shape.head_dim)
  return tuple(jax.random.normal(key, dims, jnp.float32).astype(dtype) for key in keys)
