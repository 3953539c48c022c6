"""The speed grid: every peer at every (dtype, shape), checked against the reference, then timed per pass.

Per (dtype, shape) all peers run one after another on the same inputs, so clock and temperature drift hit them
alike. Each peer's forward is checked before it is timed, and its gradients before fwd+bwd is; a wrong answer is
reported in place of a time. The backward alone is (fwd+bwd) - fwd.
"""

from __future__ import annotations

import time
from typing import Callable

import jax

from jax_flash.bench import check, grid, peers, timing
from jax_flash.bench.progress import Progress
from jax_flash.bench.report import Result

BATCHES = 5  # timed batches per point; the median is reported
TIMED_PASSES = ("fwd", "fwd+bwd")


def _measure(fn, inputs, budget_seconds: float) -> float:
  estimate = timing.time_call(fn, inputs, calls=1, batches=1, warmup=0)  # compiled and checked already
  calls = timing.calls_for(estimate, budget_seconds / BATCHES)
  return timing.time_call(fn, inputs, calls=calls, batches=BATCHES, warmup=1)


def failure_reason(e: Exception) -> str:
  text = str(e)
  if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
    return "failed: out of memory"
  first_line = (text.strip().splitlines() or [""])[0]
  return f"failed: {type(e).__name__}: {first_line[:200]}"


class _Reference:
  """The reference for one (dtype, shape), computed on first use (never when no peer runs)."""

  def __init__(self, shape: grid.Shape, inputs):
    self.shape, self.inputs, self.value = shape, inputs, None

  def get(self):
    if self.value is None:
      self.value = check.reference(self.shape, self.inputs)
    return self.value


def _run_peer(peer: peers.Peer, shape: grid.Shape, dtype: str, inputs, reference: _Reference,
              budget_seconds: float, platform: str) -> list[Result]:
  """The fwd, bwd and fwd+bwd results of one peer at one (dtype, shape)."""
  seconds: dict[str, float] = {}
  reasons: dict[str, str] = {}
  errors: dict[str, dict[str, float]] = {}
  attention = None
  for pass_name in TIMED_PASSES:
    reason = peer.skip_reason(shape, dtype, pass_name, platform)
    if reason is not None:
      reasons[pass_name] = reason
      continue
    try:
      attention = attention or peer.build(shape)
      fn = peers.make_pass(attention, pass_name)
      outputs = fn(*inputs)  # compiles; the outputs are checked before any timing
      outputs = outputs if isinstance(outputs, tuple) else (outputs,)
      result = check.compare(outputs, reference.get(), dtype)
      errors[pass_name] = result.errors
      del outputs
      if not result.passed:
        reasons[pass_name] = result.failure()
        continue
      seconds[pass_name] = _measure(fn, inputs, budget_seconds)
    except Exception as e:  # a peer that fails on a shape (e.g. out of memory) is reported, not fatal
      reasons[pass_name] = failure_reason(e)
  if "fwd" in seconds and "fwd+bwd" in seconds:
    seconds["bwd"] = seconds["fwd+bwd"] - seconds["fwd"]
  else:
    reasons["bwd"] = reasons.get("fwd+bwd") or reasons.get("fwd")
  errors["bwd"] = errors.get("fwd+bwd")
  results = []
  for pass_name in grid.PASSES:
    s = seconds.get(pass_name)
    tflops = shape.flops(pass_name) / s / 1e12 if s and s > 0 else None
    results.append(Result(pass_name, dtype, shape, peer.name, seconds=s, tflops=tflops,
                          skipped=None if tflops is not None else (reasons.get(pass_name) or "bwd time not positive"),
                          errors=errors.get(pass_name)))
  return results


def _summary(results: list[Result]) -> str:
  by_pass = {r.pass_name: r for r in results}
  timed = [f"{p} {by_pass[p].tflops:.0f}" for p in grid.PASSES if by_pass[p].tflops is not None]
  if timed:
    return ", ".join(timed) + " TFLOP/s"
  return by_pass["fwd"].skipped or ""


def run(shapes: list[grid.Shape], peer_table: list[peers.Peer], dtypes: list[str], budget_seconds: float,
        time_limit: float | None = None, seed: int = 0,
        on_shape_done: Callable[[list[Result]], None] | None = None) -> list[Result]:
  """Checks and times every peer at every (dtype, shape); past `time_limit` seconds the rest is reported as not
  run. Shapes run coarse to fine (grid.coarse_to_fine), so a cut-short run still spans every panel.
  `on_shape_done` gets the results so far after each (dtype, shape), e.g. to save them before a crash."""
  platform = jax.devices()[0].platform
  order = [(dtype, shape) for dtype in dtypes for shape in grid.coarse_to_fine(shapes)]
  progress = Progress(len(order) * len(peer_table), "speed")
  results: list[Result] = []
  start = time.monotonic()
  for index, (dtype, shape) in enumerate(order):
    inputs = peers.random_inputs(shape, dtype, seed=seed + index)
    reference = _Reference(shape, inputs)
    for peer in peer_table:
      if time_limit is not None and time.monotonic() - start > time_limit:
        reason = f"not run: --time-limit {time_limit:g} s reached"
        peer_results = [Result(p, dtype, shape, peer.name, skipped=reason) for p in grid.PASSES]
      else:
        peer_results = _run_peer(peer, shape, dtype, inputs, reference, budget_seconds, platform)
      results += peer_results
      progress.advance(f"{dtype} {shape.label()} {peer.name}: {_summary(peer_results)}")
    del inputs, reference
    if on_shape_done is not None:
      on_shape_done(results)
  return results
