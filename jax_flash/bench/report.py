"""The benchmark's results as a Markdown table (TFLOP/s per peer, and jax_flash's ratio to the best other peer)."""

from __future__ import annotations

import dataclasses

from jax_flash.bench.grid import Shape

OURS = "jax_flash"


@dataclasses.dataclass
class Result:
  pass_name: str
  shape: Shape
  peer: str
  seconds: float | None = None
  tflops: float | None = None
  skipped: str | None = None  # why there is no number

  def to_json(self) -> dict:
    return {"pass": self.pass_name, **dataclasses.asdict(self.shape), "peer": self.peer, "seconds": self.seconds,
            "tflops": self.tflops, "skipped": self.skipped}


def table(results: list[Result], peer_names: list[str]) -> str:
  rows: dict[tuple, dict[str, Result]] = {}
  for r in results:
    key = (r.pass_name, r.shape.head_dim, r.shape.seqlen, r.shape.causal, r.shape.batch, r.shape.heads)
    rows.setdefault(key, {})[r.peer] = r
  others = [p for p in peer_names if p != OURS]
  header = ["pass", "D", "seqlen", "causal", "batch x heads"] + peer_names + [f"{OURS} / best peer"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for (pass_name, head_dim, seqlen, causal, batch, heads), by_peer in rows.items():
    cells = [pass_name, str(head_dim), str(seqlen), "yes" if causal else "no", f"{batch} x {heads}"]
    for peer in peer_names:
      r = by_peer.get(peer)
      cells.append(f"{r.tflops:.0f}" if r is not None and r.tflops is not None else "–")
    ours = by_peer.get(OURS)
    best = max((by_peer[p].tflops for p in others if p in by_peer and by_peer[p].tflops is not None), default=None)
    ratio = ours.tflops / best if ours is not None and ours.tflops is not None and best else None
    cells.append(f"{ratio:.2f}" if ratio is not None else "–")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def skipped_notes(results: list[Result]) -> list[str]:
  """One line per (peer, reason) for the entries without a number."""
  seen: dict[tuple[str, str], list[str]] = {}
  for r in results:
    if r.skipped is not None:
      where = f"{r.pass_name} D{r.shape.head_dim} S{r.shape.seqlen}{' causal' if r.shape.causal else ''}"
      seen.setdefault((r.peer, r.skipped), []).append(where)
  return [f"- {peer}: {reason} ({len(where)} entries, e.g. {where[0]})" for (peer, reason), where in seen.items()]
