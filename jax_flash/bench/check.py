"""Correctness of a peer at a benchmark shape, before it is timed: its output and gradients on the full inputs,
compared on a slice (batch 0, the first heads) with a float32 reference computed at highest matmul precision.

Attention of one (batch, head) depends only on that batch and head, so the slice of a full run must equal the
reference on the sliced inputs; the slice keeps the reference cheap at 16k tokens. A peer whose relative error
(‖x - ref‖ / ‖ref‖) exceeds the tolerance of its dtype, or is not finite, is reported and not timed.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jax_flash.bench.grid import Shape
from jax_flash.reference import reference_attention

CHECKED_HEADS = 2  # heads of batch 0 compared with the reference
# Relative-error bounds: 16-bit inputs and probabilities give errors near 1e-3 (fp16) to 1e-2 (bf16) for a right
# kernel; wrong masking, scaling or indexing gives errors of order 1.
TOLERANCE = {"bfloat16": 5e-2, "float16": 2e-2}
OUTPUT_NAMES = ("o", "dq", "dk", "dv")


@dataclasses.dataclass
class Check:
  errors: dict[str, float]  # relative error of each compared tensor
  tolerance: float

  @property
  def passed(self) -> bool:
    return all(np.isfinite(e) and e <= self.tolerance for e in self.errors.values())

  def failure(self) -> str | None:
    if self.passed:
      return None
    worst = ", ".join(f"{k} {v:.3g}" for k, v in self.errors.items())
    return f"wrong answers: relative error {worst} (tolerance {self.tolerance:g})"


def _slice(x: jax.Array) -> jax.Array:
  return x[:1, :, :CHECKED_HEADS].astype(jnp.float32)


def reference(shape: Shape, inputs: tuple[jax.Array, ...]) -> tuple[np.ndarray, ...]:
  """(o, dq, dk, dv) of the reference on the checked slice, as float32 host arrays."""
  q, k, v, dout = (_slice(x) for x in inputs)

  def attention(q, k, v):
    return reference_attention(q, k, v, causal=shape.causal)

  with jax.default_matmul_precision("highest"):
    o, vjp = jax.vjp(attention, q, k, v)
    results = (o, *vjp(dout))
  return tuple(np.asarray(x) for x in results)


def relative_error(x, ref: np.ndarray) -> float:
  x = np.asarray(x, np.float32)
  return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), np.finfo(np.float32).tiny))


def compare(outputs: tuple[jax.Array, ...], ref: tuple[np.ndarray, ...], dtype: str) -> Check:
  """Compares a peer's full outputs (o, or o, dq, dk, dv) with the reference on the checked slice."""
  errors = {name: relative_error(_slice(x), r) for name, x, r in zip(OUTPUT_NAMES, outputs, ref)}
  return Check(errors=errors, tolerance=TOLERANCE[dtype])
