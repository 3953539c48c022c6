"""Run the benchmark: `python -m jax_flash.bench [--quick] [--json PATH]`."""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp

from jax_flash.bench import grid, peers, report, timing

BATCHES = 5  # timed batches per point; the median is reported


def _measure(fn, inputs, budget_seconds: float) -> float:
  estimate = timing.time_call(fn, inputs, calls=1, batches=1)  # also compiles and warms up
  calls = timing.calls_for(estimate, budget_seconds / BATCHES)
  return timing.time_call(fn, inputs, calls=calls, batches=BATCHES, warmup=1)


def _failure(e: Exception) -> str:
  first_line = (str(e).strip().splitlines() or [""])[0]
  return f"failed: {type(e).__name__}: {first_line[:160]}"


def run(shapes: list[grid.Shape], peer_table, dtype, budget_seconds: float) -> list[report.Result]:
  results = []
  for shape in shapes:
    inputs = peers.random_inputs(shape, dtype)
    for peer in peer_table:
      reason = peer.unavailable_reason()
      attention = peer.build(shape) if reason is None else reason
      if isinstance(attention, str):
        results += [report.Result(p, shape, peer.name, skipped=attention) for p in grid.PASS_FLOP_FACTOR]
        continue
      seconds: dict[str, float] = {}
      failure = None
      for pass_name in ("fwd", "fwd+bwd"):
        try:
          seconds[pass_name] = _measure(peers.make_pass(attention, pass_name), inputs, budget_seconds)
        except Exception as e:  # a peer that fails on a shape (e.g. out of memory) is reported, not fatal
          failure = _failure(e)
          break
      if failure is None:
        # The backward alone is what fwd+bwd adds to fwd.
        seconds["bwd"] = seconds["fwd+bwd"] - seconds["fwd"]
      for pass_name in grid.PASS_FLOP_FACTOR:
        if pass_name in seconds:
          s = seconds[pass_name]
          results.append(report.Result(pass_name, shape, peer.name, seconds=s, tflops=shape.flops(pass_name) / s / 1e12))
        else:
          results.append(report.Result(pass_name, shape, peer.name, skipped=failure))
      line = ", ".join(f"{k} {shape.flops(k) / v / 1e12:.0f}" for k, v in seconds.items() if v > 0)
      print(f"  D{shape.head_dim} S{shape.seqlen} causal={shape.causal} {peer.name}: {line or failure}",
            file=sys.stderr, flush=True)
  return results


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jax_flash.bench", description=__doc__)
  parser.add_argument("--quick", action="store_true", help="a few shapes (about a minute)")
  parser.add_argument("--json", metavar="PATH", help="also write every result (and skip reasons) as JSON")
  parser.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16")
  parser.add_argument("--peers", nargs="*", help="names of the peers to run (default: all)")
  parser.add_argument("--head-dims", nargs="*", type=int, help="only these head dims of the grid")
  parser.add_argument("--seqlens", nargs="*", type=int, help="only these sequence lengths (batch = 16384 / seqlen)")
  parser.add_argument("--seconds-per-point", type=float, default=None,
                      help="timing budget per (shape, peer, pass); default 0.25 with --quick, 1.0 otherwise")
  args = parser.parse_args(argv)

  device = jax.devices()[0]
  if device.platform != "gpu":
    print(f"jax_flash.bench needs a GPU; JAX's default device is {device}", file=sys.stderr)
    return 1
  peer_table = [p for p in peers.PEERS if not args.peers or p.name in args.peers]
  budget = args.seconds_per_point or (0.25 if args.quick else 1.0)
  dtype = jnp.dtype(args.dtype)
  print(f"# {device.device_kind}, jax {jax.__version__}, {args.dtype}, batch x seqlen = {grid.TOKENS}, "
        f"heads x head_dim = {grid.HIDDEN}; TFLOP/s; bwd = (fwd+bwd) - fwd", file=sys.stderr)
  results = run(grid.shapes(args.quick, args.head_dims, args.seqlens), peer_table, dtype, budget)

  names = [p.name for p in peer_table]
  print(f"{device.device_kind}, jax {jax.__version__}, {args.dtype}; TFLOP/s (forward 4·B·H·S²·D, halved when "
        "causal; bwd 2.5x, fwd+bwd 3.5x)\n")
  print(report.table(results, names))
  notes = report.skipped_notes(results)
  if notes:
    print("\nNot measured:\n" + "\n".join(notes))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(device=device.device_kind, jax=jax.__version__, dtype=args.dtype,
                     results=[r.to_json() for r in results]), f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
