"""Timing jitted calls: many back-to-back calls between two device syncs, warm-up excluded, median over batches."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import jax


def time_call(fn: Callable, args: tuple, *, calls: int, batches: int, warmup: int = 3) -> float:
  """Median seconds per call of fn(*args): `batches` timings of `calls` back-to-back calls, after `warmup` calls
  (compilation, autotuning and first-touch costs stay out). The host only syncs at the ends of a batch, so the
  calls queue up on the device as in a training step."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  per_call = []
  for _ in range(batches):
    start = time.perf_counter()
    out = None
    for _ in range(calls):
      out = fn(*args)
    jax.block_until_ready(out)
    per_call.append((time.perf_counter() - start) / calls)
  return statistics.median(per_call)


def calls_for(estimated_seconds: float, budget_seconds: float, *, lo: int = 3, hi: int = 200) -> int:
  """Calls per batch so that a batch takes about budget_seconds."""
  return max(lo, min(hi, int(budget_seconds / max(estimated_seconds, 1e-6))))
