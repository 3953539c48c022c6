"""Benchmark results: the record of one timed (pass, dtype, shape, peer), and Markdown tables of TFLOP/s with
jax_flash's ratio to the best other peer and to each peer."""

from __future__ import annotations

import dataclasses

from jax_flash.bench.grid import PASSES, Shape
from jax_flash.bench.peers import OURS


@dataclasses.dataclass
class Result:
  pass_name: str
  dtype: str
  shape: Shape
  peer: str
  seconds: float | None = None
  tflops: float | None = None
  skipped: str | None = None  # why there is no number
  errors: dict[str, float] | None = None  # relative errors of the correctness check (o; dq, dk, dv)

  def to_json(self) -> dict:
    return {"pass": self.pass_name, "dtype": self.dtype, **dataclasses.asdict(self.shape), "peer": self.peer,
            "seconds": self.seconds, "tflops": self.tflops, "skipped": self.skipped, "errors": self.errors}

  @classmethod
  def from_json(cls, entry: dict) -> "Result":
    shape = Shape(**{f.name: entry[f.name] for f in dataclasses.fields(Shape)})
    return cls(pass_name=entry["pass"], dtype=entry["dtype"], shape=shape, peer=entry["peer"],
               seconds=entry.get("seconds"), tflops=entry.get("tflops"), skipped=entry.get("skipped"),
               errors=entry.get("errors"))


def by_row(results: list[Result]) -> dict[tuple, dict[str, Result]]:
  """Results keyed by (dtype, pass, head dim, seqlen, causal, batch, heads), in reading order."""
  rows: dict[tuple, dict[str, Result]] = {}
  order = {p: i for i, p in enumerate(PASSES)}
  for r in sorted(results, key=lambda r: (r.dtype, order[r.pass_name], r.shape.head_dim, r.shape.seqlen,
                                          r.shape.causal)):
    key = (r.dtype, r.pass_name, r.shape.head_dim, r.shape.seqlen, r.shape.causal, r.shape.batch, r.shape.heads)
    rows.setdefault(key, {})[r.peer] = r
  return rows


def best_peer(by_peer: dict[str, Result]) -> tuple[str, float] | None:
  """The fastest peer other than jax_flash, with its TFLOP/s."""
  timed = [(r.tflops, name) for name, r in by_peer.items() if name != OURS and r.tflops is not None]
  if not timed:
    return None
  tflops, name = max(timed)
  return name, tflops


def ratio_to_best(by_peer: dict[str, Result]) -> float | None:
  ours = by_peer.get(OURS)
  best = best_peer(by_peer)
  if ours is None or ours.tflops is None or best is None:
    return None
  return ours.tflops / best[1]


def _cell(value: float | None, fmt: str) -> str:
  return format(value, fmt) if value is not None else "–"


def _tflops(value: float | None) -> str:
  """Whole TFLOP/s on GPUs; two significant digits for the small numbers of a CPU run."""
  return _cell(value, ".0f" if value is None or value >= 10 else ".2g")


def table(results: list[Result], peer_names: list[str]) -> str:
  """TFLOP/s of every peer and jax_flash / best other peer, one row per (dtype, pass, shape)."""
  header = ["dtype", "pass", "D", "seqlen", "causal", "batch x heads"] + peer_names + [f"{OURS} / best peer"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for (dtype, pass_name, head_dim, seqlen, causal, batch, heads), by_peer in by_row(results).items():
    cells = [dtype, pass_name, str(head_dim), str(seqlen), "yes" if causal else "no", f"{batch} x {heads}"]
    cells += [_tflops(by_peer[p].tflops if p in by_peer else None) for p in peer_names]
    cells.append(_cell(ratio_to_best(by_peer), ".2f"))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def ratio_table(results: list[Result], peer_names: list[str]) -> str:
  """jax_flash's TFLOP/s over each peer's, one row per (dtype, pass, shape); > 1 means jax_flash is faster."""
  others = [p for p in peer_names if p != OURS]
  header = ["dtype", "pass", "D", "seqlen", "causal", OURS] + [f"/ {p}" for p in others] + ["/ best"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for (dtype, pass_name, head_dim, seqlen, causal, _, _), by_peer in by_row(results).items():
    ours = by_peer.get(OURS)
    ours_tflops = ours.tflops if ours is not None else None
    cells = [dtype, pass_name, str(head_dim), str(seqlen), "yes" if causal else "no", _tflops(ours_tflops)]
    for p in others:
      theirs = by_peer[p].tflops if p in by_peer else None
      cells.append(_cell(ours_tflops / theirs if ours_tflops and theirs else None, ".2f"))
    cells.append(_cell(ratio_to_best(by_peer), ".2f"))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def skipped_notes(results: list[Result]) -> list[str]:
  """One line per (peer, reason) for the entries without a number."""
  seen: dict[tuple[str, str], list[str]] = {}
  for r in results:
    if r.skipped is not None:
      seen.setdefault((r.peer, r.skipped), []).append(f"{r.dtype} {r.pass_name} {r.shape.label()}")
  return [f"- {peer}: {reason} ({len(where)} entries, e.g. {where[0]})" for (peer, reason), where in seen.items()]


def markdown(documents: list[dict]) -> str:
  """Every table of one or more saved result documents: speed, ratios, skip reasons, numerics, memory."""
  from jax_flash.bench import memory, numerics  # they import this module's Result

  results = [Result.from_json(e) for d in documents if "speed" in d for e in d["speed"]["results"]]
  names = list(dict.fromkeys(r.peer for r in results))
  parts = []
  for d in documents:
    env = d["environment"]
    parts.append(f"- {env['device']}, driver {env.get('driver')}, jax {env['jax']}, jax_flash "
                 f"{env.get('revision') or env['jax_flash']}, {env['date']}: `{env['command']}`")
  if results:
    parts += ["TFLOP/s:", table(results, names), f"{OURS} / each peer:", ratio_table(results, names)]
    notes = skipped_notes(results)
    if notes:
      parts += ["Not measured:", "\n".join(notes)]
  for d in documents:
    if "numerics" in d:
      parts += ["Numerical error (RMSE against float64):", numerics.table(d["numerics"])]
    if "memory" in d:
      parts += ["Memory:", memory.table(d["memory"])]
  return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
  """`python -m jax_flash.bench.report results.json [more.json ...]`: the tables of saved results, as Markdown."""
  import json
  import sys

  paths = sys.argv[1:] if argv is None else argv
  if not paths or any(a in ("-h", "--help") for a in paths):
    print(main.__doc__, file=sys.stderr)
    return 2
  documents = []
  for path in paths:
    with open(path) as f:
      documents.append(json.load(f))
  print(markdown(documents))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
