"""Memory scaling: the longest sequence whose forward+backward runs at batch 1, 16 heads, head dim 128, bf16
(causal) with each implementation on this GPU, and the device memory it needs per token.

The length doubles until a run fails, then bisects between the last length that ran and the first that did not,
to within an eighth of the length.
Lengths above `run_cap` are not run (a forward+backward at millions of tokens takes minutes): there the compiled
program's own memory analysis (arguments + outputs + temporaries, XLA's buffer assignment) is compared with the
device's memory, and the result says which lengths ran and which only fit by that analysis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_flash.bench import peers
from jax_flash.bench.grid import Shape
from jax_flash.bench.progress import Progress
from jax_flash.bench.speed import failure_reason

HEADS = 16
HEAD_DIM = 128
DTYPE = "bfloat16"
CAUSAL = True
START_SEQLEN = 4096
RESOLUTION = 1024  # lengths stay multiples of this
# Bisection stops when the bracket is narrower than 1/BRACKET_FRACTION of the longest good length (or RESOLUTION):
# near its limit each of XLA's attempts autotunes and fails allocations for 15-20 s on an H200.
BRACKET_FRACTION = 8
MAX_SEQLEN = 1 << 23  # stop doubling here: no implementation needs more memory than a GPU has before this
DEFAULT_RUN_CAP = 1 << 18
MEMORY_PEERS = (peers.OURS, "XLA (jax.nn)")


def _shape(seqlen: int) -> Shape:
  return Shape(batch=1, seqlen=seqlen, heads=HEADS, head_dim=HEAD_DIM, causal=CAUSAL)


def _program_bytes(compiled) -> int | None:
  """Device bytes of one call: arguments + outputs + temporaries, less what outputs alias from arguments."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
          - stats.alias_size_in_bytes)


def _attempt(peer: peers.Peer, seqlen: int, run_cap: int, device_bytes: int) -> dict:
  """Compiles forward+backward at this length and runs it (up to run_cap) or checks its analysed memory."""
  shape = _shape(seqlen)
  entry = {"seqlen": seqlen, "ok": False, "ran": False, "program_bytes": None, "reason": None}
  fn = peers.make_pass(peer.build(shape), "fwd+bwd")
  dims = (shape.batch, shape.seqlen, shape.heads, shape.head_dim)
  try:
    compiled = fn.lower(*[jax.ShapeDtypeStruct(dims, jnp.dtype(DTYPE))] * 4).compile()
    entry["program_bytes"] = _program_bytes(compiled)
    if seqlen <= run_cap:
      jax.block_until_ready(compiled(*peers.random_inputs(shape, DTYPE)))
      entry["ok"] = entry["ran"] = True
    elif entry["program_bytes"] is None:
      entry["reason"] = "above the run cap and no memory analysis"
    else:
      entry["ok"] = entry["program_bytes"] <= device_bytes
      if not entry["ok"]:
        entry["reason"] = f"needs {entry['program_bytes'] / 2**30:.1f} GiB by its memory analysis"
  except Exception as e:  # out of memory (at compile or run time) or an unsupported length
    entry["reason"] = failure_reason(e)
  return entry


def _longest(peer: peers.Peer, run_cap: int, device_bytes: int, progress: Progress) -> list[dict]:
  attempts = []

  def fits(seqlen: int) -> bool:
    attempts.append(_attempt(peer, seqlen, run_cap, device_bytes))
    a = attempts[-1]
    progress.advance(f"{peer.name} S={seqlen}: " + ("ran" if a["ran"] else "fits by analysis" if a["ok"]
                                                    else a["reason"]), steps=0)
    return a["ok"]

  good, bad = 0, None
  seqlen = START_SEQLEN
  while seqlen <= MAX_SEQLEN:
    if not fits(seqlen):
      bad = seqlen
      break
    good, seqlen = seqlen, seqlen * 2
  while bad is not None and bad - good > max(RESOLUTION, good // BRACKET_FRACTION):
    middle = (good + bad) // 2 // RESOLUTION * RESOLUTION
    if fits(middle):
      good = middle
    else:
      bad = middle
  return attempts


def run(peer_table: list[peers.Peer], run_cap: int = DEFAULT_RUN_CAP) -> dict:
  """{"setting", "device_bytes", "results": [{peer, longest_ran, longest_fits, bytes_per_token, attempts}]}."""
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform == "gpu" else None
  setting = {"batch": 1, "heads": HEADS, "head_dim": HEAD_DIM, "dtype": DTYPE, "causal": CAUSAL, "pass": "fwd+bwd",
             "run_cap": run_cap, "resolution": f"max({RESOLUTION}, longest / {BRACKET_FRACTION})"}
  if not stats or "bytes_limit" not in stats:
    return {"setting": setting, "skipped": f"needs a GPU with memory statistics (device is {device.device_kind})",
            "results": []}
  device_bytes = stats["bytes_limit"]
  chosen = [p for p in peer_table if p.name in MEMORY_PEERS]
  progress = Progress(len(chosen), "memory")
  results = []
  for peer in chosen:
    reason = peer.skip_reason(_shape(START_SEQLEN), DTYPE, "fwd+bwd", device.platform)
    if reason is not None:
      results.append({"peer": peer.name, "skipped": reason})
      progress.advance(f"{peer.name}: {reason}")
      continue
    attempts = _longest(peer, run_cap, device_bytes, progress)
    ran = [a for a in attempts if a["ran"]]
    fits = [a for a in attempts if a["ok"]]
    largest_ran = max(ran, key=lambda a: a["seqlen"], default=None)
    results.append({
        "peer": peer.name,
        "longest_ran": largest_ran["seqlen"] if largest_ran else None,
        "longest_fits": max((a["seqlen"] for a in fits), default=None),
        "first_failure": min((a for a in attempts if not a["ok"]), key=lambda a: a["seqlen"], default=None),
        "bytes_per_token": (largest_ran["program_bytes"] / largest_ran["seqlen"]
                            if largest_ran and largest_ran["program_bytes"] else None),
        "attempts": attempts,
    })
    progress.advance(f"{peer.name}: ran up to {results[-1]['longest_ran']}, fits up to "
                     f"{results[-1]['longest_fits']}")
  after = device.memory_stats() or {}
  return {"setting": setting, "device_bytes": device_bytes, "peak_bytes_in_use": after.get("peak_bytes_in_use"),
          "results": results}


def table(memory: dict) -> str:
  if memory.get("skipped"):
    return f"memory: not measured ({memory['skipped']})"
  header = ["implementation", "longest run (tokens)", "longest that fits by memory analysis",
            "bytes / token at the longest run", "first failure"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in memory["results"]:
    if r.get("skipped"):
      lines.append(f"| {r['peer']} | {r['skipped']} | | | |")
      continue
    failure = r["first_failure"]
    lines.append("| " + " | ".join([
        r["peer"], str(r["longest_ran"]), str(r["longest_fits"]),
        f"{r['bytes_per_token'] / 1024:.1f} KiB" if r["bytes_per_token"] else "–",
        f"S={failure['seqlen']}: {failure['reason']}" if failure else "none up to the search limit",
    ]) + " |")
  return "\n".join(lines)
