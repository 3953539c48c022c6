"""The FlashAttention-3 paper's numerical-error experiment: RMSE of the attention output against a float64
reference, on inputs drawn as N(0, 1) + N(0, 100) * Bernoulli(0.001) (a few large outliers, as in LLM activations).

The reference is computed in float64 from the same 16-bit-rounded inputs, so the error is that of the attention
computation alone. Standard attention is `standard_attention` compiled by XLA, as the paper's baseline and as
`jax.nn.dot_product_attention(implementation="xla")` computes it: scores materialised in the input dtype, softmax
in float32, probabilities rounded to the input dtype (written out here because jax.nn's float16 matmul precision
does not compile on CPU).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jax_flash.bench import check, peers
from jax_flash.bench.grid import Shape
from jax_flash.bench.progress import Progress
from jax_flash.bench.speed import failure_reason

OUTLIER_PROBABILITY = 0.001
OUTLIER_STD = 10.0  # N(0, 100): variance 100
# Batch 1, 16 heads of 128, 4096 tokens: the paper's head dim at a length where its float64 reference stays cheap.
SHAPE = Shape(batch=1, seqlen=4096, heads=16, head_dim=128, causal=False)
STANDARD = "standard attention (XLA)"
# The peers the paper compares with standard attention; others are skipped here.
NUMERICS_PEERS = (peers.OURS, "cuDNN (jax.nn)")


def paper_inputs(shape: Shape, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """float64 q, k, v in [B, S, H, D]: N(0, 1) plus, with probability 0.001 per element, N(0, 100)."""
  rng = np.random.default_rng(seed)
  dims = (shape.batch, shape.seqlen, shape.heads, shape.head_dim)

  def draw():
    outliers = rng.normal(0.0, OUTLIER_STD, dims) * (rng.random(dims) < OUTLIER_PROBABILITY)
    return rng.normal(0.0, 1.0, dims) + outliers

  return draw(), draw(), draw()


def reference_float64(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> np.ndarray:
  """Attention in float64, [B, S, H, D], one head at a time (bounded memory)."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  out = np.empty(q.shape, np.float64)
  for b in range(q.shape[0]):
    for h in range(q.shape[2]):
      out[b, :, h] = check.softmax_probs(q[b, :, h], k[b, :, h], causal) @ v[b, :, h]
  return out


def standard_attention(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool) -> jax.Array:
  """Attention as written in the textbook, in q's dtype: [B, S, H, D] in and out."""
  seqlen_q, seqlen_k, head_dim = q.shape[1], k.shape[1], q.shape[-1]
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=q.dtype)  # [B, H, Sq, Sk] in q's dtype
  scores = scores * jnp.asarray(1.0 / math.sqrt(head_dim), q.dtype)
  if causal:
    visible = jnp.arange(seqlen_k)[None, :] <= jnp.arange(seqlen_q)[:, None] + (seqlen_k - seqlen_q)
    scores = jnp.where(visible, scores, -jnp.inf)
  probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(q.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v, preferred_element_type=q.dtype)


def rmse(x, ref: np.ndarray) -> float:
  return float(np.sqrt(np.mean((np.asarray(x, np.float64) - ref) ** 2)))


def run(peer_table: list[peers.Peer], dtypes: list[str], shape: Shape = SHAPE, seed: int = 0) -> dict:
  """RMSE against float64 of each numerics peer in each dtype: {"shape", "inputs", "results": [...]}."""
  platform = jax.devices()[0].platform
  standard = peers.Peer(STANDARD, lambda shape: lambda q, k, v: standard_attention(q, k, v, shape.causal),
                        gpu_only=False)
  chosen = [standard] + [p for p in peer_table if p.name in NUMERICS_PEERS]
  progress = Progress(len(dtypes) * len(chosen), "numerics")
  q64, k64, v64 = paper_inputs(shape, seed)
  results = []
  for dtype in dtypes:
    # Round the inputs to the dtype first: the reference sees exactly what the kernels see.
    q, k, v = (jnp.asarray(x, dtype) for x in (q64, k64, v64))
    ref = reference_float64(*(np.asarray(x, np.float64) for x in (q, k, v)), shape.causal)
    for peer in chosen:
      entry = {"peer": peer.name, "dtype": dtype, "rmse": None, "skipped": peer.skip_reason(shape, dtype, "fwd",
                                                                                          platform)}
      if entry["skipped"] is None:
        try:
          entry["rmse"] = rmse(jax.jit(peer.build(shape))(q, k, v), ref)
        except Exception as e:  # reported, not fatal
          entry["skipped"] = failure_reason(e)
      results.append(entry)
      progress.advance(f"{dtype} {peer.name}: " + (f"RMSE {entry['rmse']:.3g}" if entry["rmse"] is not None
                                                   else entry["skipped"]))
  return {"shape": {"batch": shape.batch, "seqlen": shape.seqlen, "heads": shape.heads,
                    "head_dim": shape.head_dim, "causal": shape.causal},
          "inputs": f"N(0,1) + N(0,{OUTLIER_STD ** 2:g}) * Bernoulli({OUTLIER_PROBABILITY:g}), seed {seed}",
          "reference": "float64 (numpy) on the same dtype-rounded inputs",
          "results": results}


def table(numerics: dict) -> str:
  """RMSE per implementation (columns) and dtype (rows), and standard attention's RMSE over jax_flash's."""
  names = list(dict.fromkeys(r["peer"] for r in numerics["results"]))
  dtypes = list(dict.fromkeys(r["dtype"] for r in numerics["results"]))
  by = {(r["peer"], r["dtype"]): r["rmse"] for r in numerics["results"]}
  header = ["dtype"] + names + [f"standard / {peers.OURS}"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for dtype in dtypes:
    ours, standard = by.get((peers.OURS, dtype)), by.get((STANDARD, dtype))
    cells = [dtype] + [f"{by[(n, dtype)]:.3g}" if by.get((n, dtype)) is not None else "–" for n in names]
    cells.append(f"{standard / ours:.2f}" if ours and standard else "–")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)
