"""Correctness of a peer at a benchmark shape, before it is timed: its output and gradients on the full inputs,
compared on one (batch, head) with a float32 NumPy reference of the forward and backward.

Attention of one (batch, head) depends only on that batch and head, so that slice of a full run must equal the
reference on the sliced inputs; one head keeps the reference cheap at 16k tokens. NumPy rather than XLA: XLA
autotunes every new matmul shape, which cost about 30 s per grid shape on an H200. A peer whose relative error
(‖x - ref‖ / ‖ref‖) exceeds the tolerance of its dtype, or is not finite, is reported and not timed.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from jax_flash.bench.grid import Shape

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


def _slice(x) -> np.ndarray:
  """[S, D] float32 of batch 0, head 0 (sliced on the device, so only one head is copied to the host)."""
  return np.asarray(x[0, :, 0], np.float32)


def softmax_probs(q: np.ndarray, k: np.ndarray, causal: bool) -> np.ndarray:
  """softmax(q kᵀ / sqrt(D)) of one head, [Sq, Sk], in q's precision; causal is bottom-right aligned."""
  scores = (q @ k.T) * (1.0 / math.sqrt(q.shape[-1]))  # [Sq, Sk]
  if causal:
    seqlen_q, seqlen_k = scores.shape
    visible = np.arange(seqlen_k)[None, :] <= np.arange(seqlen_q)[:, None] + (seqlen_k - seqlen_q)
    scores = np.where(visible, scores, -np.inf)
  probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
  probs /= probs.sum(axis=-1, keepdims=True)
  return probs


def attention_vjp(q: np.ndarray, k: np.ndarray, v: np.ndarray, dout: np.ndarray, causal: bool):
  """(o, dq, dk, dv) of softmax(q kᵀ / sqrt(D)) v for one head, [S, D] each."""
  scale = 1.0 / math.sqrt(q.shape[-1])
  probs = softmax_probs(q, k, causal)
  o = probs @ v
  dv = probs.T @ dout
  # dS = P * (dP - rowsum(dO * O)): the softmax backward, with dP = dO vᵀ.
  dscores = probs * (dout @ v.T - np.sum(dout * o, axis=-1, keepdims=True))
  del probs
  return o, (dscores @ k) * scale, (dscores.T @ q) * scale, dv


def reference(shape: Shape, inputs: tuple[jax.Array, ...]) -> tuple[np.ndarray, ...]:
  """(o, dq, dk, dv) of the reference on the checked (batch, head), float32 [S, D] host arrays."""
  return attention_vjp(*(_slice(x) for x in inputs), shape.causal)


def relative_error(x, ref: np.ndarray) -> float:
  return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), np.finfo(np.float32).tiny))


def compare(outputs: tuple[jax.Array, ...], ref: tuple[np.ndarray, ...], dtype: str) -> Check:
  """Compares a peer's full outputs (o, or o, dq, dk, dv) with the reference on the checked slice."""
  errors = {name: relative_error(_slice(x), r) for name, x, r in zip(OUTPUT_NAMES, outputs, ref)}
  return Check(errors=errors, tolerance=TOLERANCE[dtype])
