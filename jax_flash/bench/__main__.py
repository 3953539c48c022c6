"""Run the benchmark suite: `python -m jax_flash.bench [--quick] [--numerics] [--memory] [--json PATH] [--plot DIR]`.

Speed (fwd, bwd, fwd+bwd TFLOP/s on the FlashAttention-3 paper's grid, every importable peer checked against a
reference and timed in this process), the paper's numerical-error experiment (--numerics) and memory scaling
(--memory). Peers that are absent or do not support a shape, dtype or pass are listed with the reason.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax

from jax_flash.bench import environment, grid, memory, numerics, peers, report, speed

SCHEMA_VERSION = 1
QUICK_SECONDS_PER_POINT = 0.25
FULL_SECONDS_PER_POINT = 1.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m jax_flash.bench", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="a few shapes (about a minute)")
  parser.add_argument("--json", metavar="PATH", help="write every result, skip reason and the environment as JSON")
  parser.add_argument("--plot", metavar="DIR", help="write PNG plots of the speed results into DIR (matplotlib)")
  parser.add_argument("--dtypes", nargs="+", choices=grid.DTYPES, default=["bfloat16"])
  parser.add_argument("--peers", nargs="+", metavar="NAME",
                      help=f"peers to run (default: all): {', '.join(repr(p.name) for p in peers.PEERS)}")
  parser.add_argument("--head-dims", nargs="+", type=int, help="only these head dims of the grid")
  parser.add_argument("--seqlens", nargs="+", type=int, help="only these sequence lengths (batch = 16384 / seqlen)")
  parser.add_argument("--seconds-per-point", type=float, default=None,
                      help=f"timing budget per (shape, peer, pass); default {QUICK_SECONDS_PER_POINT} with --quick, "
                           f"{FULL_SECONDS_PER_POINT} otherwise")
  parser.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                      help="stop starting speed points after this many seconds; the rest are reported as not run")
  parser.add_argument("--no-speed", action="store_true", help="skip the speed grid (run only --numerics/--memory)")
  parser.add_argument("--numerics", action="store_true", help="the paper's numerical-error experiment")
  parser.add_argument("--memory", action="store_true", help="longest sequence and memory per token (GPU)")
  parser.add_argument("--memory-run-cap", type=int, default=memory.DEFAULT_RUN_CAP, metavar="TOKENS",
                      help="longest length the memory search runs; above it, lengths are judged by memory analysis")
  parser.add_argument("--revision", help="what source was measured (e.g. a git commit), recorded in the JSON")
  args = parser.parse_args(argv)
  for name in ("head_dims", "seqlens"):
    bad = [n for n in getattr(args, name) or () if n <= 0]
    if bad:
      parser.error(f"--{name.replace('_', '-')}: values must be positive, got {bad}")
  if args.seqlens and any(grid.TOKENS % s for s in args.seqlens):
    parser.error(f"--seqlens: each must divide {grid.TOKENS} (batch = {grid.TOKENS} / seqlen), got {args.seqlens}")
  if args.head_dims and any(grid.HIDDEN % d for d in args.head_dims):
    parser.error(f"--head-dims: each must divide {grid.HIDDEN} (heads = {grid.HIDDEN} / head dim), got "
                 f"{args.head_dims}")
  if args.no_speed and not (args.numerics or args.memory):
    parser.error("--no-speed leaves nothing to run: add --numerics and/or --memory")
  if args.plot and args.no_speed:
    parser.error("--plot draws the speed results: drop --no-speed")
  try:
    args.peer_table = peers.by_name(args.peers)
  except ValueError as e:
    parser.error(str(e))
  return args


def _write_json(document: dict, path: str) -> None:
  with open(path, "w") as f:
    json.dump(document, f, indent=1)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  if args.plot:
    from jax_flash.bench import plot  # fails early, with the install hint, when matplotlib is missing

    plot.require_matplotlib()
  device = jax.devices()[0]
  if not args.no_speed and device.platform != "gpu":
    print(f"the speed grid needs a GPU; JAX's default device is {device} (use --no-speed --numerics on CPU)",
          file=sys.stderr)
    return 1
  env = environment.describe(argv, args.revision)
  document: dict = {"schema_version": SCHEMA_VERSION, "environment": env}
  print(f"# {env['device']}, driver {env['driver']}, jax {env['jax']}, {env['date']}", file=sys.stderr)

  if not args.no_speed:
    budget = args.seconds_per_point or (QUICK_SECONDS_PER_POINT if args.quick else FULL_SECONDS_PER_POINT)
    def save(results_so_far):  # a peer that crashes the process leaves the results before it on disk
      document["speed"] = {"dtypes": args.dtypes, "seconds_per_point": budget,
                           "results": [r.to_json() for r in results_so_far]}
      if args.json:
        _write_json(document, args.json)

    results = speed.run(grid.shapes(args.quick, args.head_dims, args.seqlens), args.peer_table, args.dtypes, budget,
                        args.time_limit, on_shape_done=save)
    save(results)
    names = [p.name for p in args.peer_table]
    print(f"\n{env['device']}, jax {env['jax']}; TFLOP/s (forward 4·B·H·S²·D, halved when causal; bwd 2.5x, "
          "fwd+bwd 3.5x; bwd = (fwd+bwd) - fwd)\n")
    print(report.table(results, names))
    print(f"\n{peers.OURS} / each peer:\n")
    print(report.ratio_table(results, names))
    notes = report.skipped_notes(results)
    if notes:
      print("\nNot measured:\n" + "\n".join(notes))
  if args.numerics:
    document["numerics"] = numerics.run(args.peer_table, args.dtypes, numerics.SHAPE)
    print("\nNumerical error (RMSE against float64):\n\n" + numerics.table(document["numerics"]), flush=True)
    if args.json:  # each finished section is on disk before the next starts
      _write_json(document, args.json)
  if args.memory:
    document["memory"] = memory.run(args.peer_table, args.memory_run_cap)
    print("\nMemory:\n\n" + memory.table(document["memory"]), flush=True)
    if args.json:
      _write_json(document, args.json)
  if args.plot:
    written = plot.write([report.Result.from_json(r) for r in document["speed"]["results"]], env, args.plot)
    print("\nplots: " + ", ".join(written), file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
