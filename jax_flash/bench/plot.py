"""Plots of benchmark results in the style of the FlashAttention-3 paper, from a run or from saved JSON files:

    python -m jax_flash.bench.plot results.json [more.json ...] DIR

For each dtype and pass, one figure with a panel per (head dim, causal): TFLOP/s against sequence length, one bar
per implementation. For each dtype, one summary figure: jax_flash over the best other peer, per pass. Needs
matplotlib (`pip install 'jax_flash[bench]'`); no GPU.
"""

from __future__ import annotations

import json
import os
import sys

from jax_flash.bench.grid import PASSES
from jax_flash.bench.peers import OURS, PEERS
from jax_flash.bench.report import Result, by_row, ratio_to_best

INSTALL_HINT = "plotting needs matplotlib: pip install 'jax_flash[bench]' (or pip install matplotlib)"
PANEL_INCHES = (4.8, 3.2)
DPI = 110
BAR_GROUP_WIDTH = 0.85  # fraction of the space between two sequence lengths taken by their bars


def require_matplotlib():
  """matplotlib.pyplot on the non-interactive backend, or an ImportError that says how to install it."""
  try:
    import matplotlib
  except ImportError as e:
    raise ImportError(INSTALL_HINT) from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def load(paths: list[str]) -> tuple[list[Result], dict]:
  """The speed results of one or more JSON files (e.g. a bf16 run and an fp16 run) and the first's environment."""
  results: list[Result] = []
  environment = None
  for path in paths:
    with open(path) as f:
      document = json.load(f)
    if "speed" not in document:
      raise ValueError(f"{path}: no speed results (was it written with --no-speed?)")
    environment = environment or document["environment"]
    results += [Result.from_json(entry) for entry in document["speed"]["results"]]
  return results, environment


def _slug(pass_name: str) -> str:
  return pass_name.replace("+", "_")


def _seqlen_label(seqlen: int) -> str:
  return f"{seqlen // 1024}k" if seqlen >= 1024 else str(seqlen)


def _peer_order(results: list[Result]) -> list[str]:
  """Peers that have at least one number, in PEERS order (jax_flash first), so colours match across figures."""
  timed = {r.peer for r in results if r.tflops is not None}
  known = [p.name for p in PEERS if p.name in timed]
  return known + sorted(timed - set(known))


def _subtitle(environment: dict) -> str:
  revision = f", jax_flash {environment['revision']}" if environment.get("revision") else ""
  return f"{environment['device']}, jax {environment['jax']}{revision}, {environment['date'][:10]}"


def _speed_figure(plt, results: list[Result], dtype: str, pass_name: str, peer_names: list[str], colours,
                  environment: dict):
  # Only what was measured: shapes a cut-short run did not reach leave no empty panels or bar groups.
  chosen = [r for r in results if r.dtype == dtype and r.pass_name == pass_name and r.tflops is not None]
  head_dims = sorted({r.shape.head_dim for r in chosen})
  causal_values = sorted({r.shape.causal for r in chosen})
  figure, axes = plt.subplots(len(causal_values), len(head_dims), squeeze=False,
                              figsize=(PANEL_INCHES[0] * len(head_dims), PANEL_INCHES[1] * len(causal_values)))
  for row, causal in enumerate(causal_values):
    for col, head_dim in enumerate(head_dims):
      ax = axes[row][col]
      panel = [r for r in chosen if r.shape.head_dim == head_dim and r.shape.causal == causal]
      seqlens = sorted({r.shape.seqlen for r in panel})
      present = [n for n in peer_names if any(r.peer == n for r in panel)]
      width = BAR_GROUP_WIDTH / max(len(present), 1)
      for i, name in enumerate(present):
        by_seqlen = {r.shape.seqlen: r.tflops for r in panel if r.peer == name}
        xs = [j + (i - (len(present) - 1) / 2) * width for j, s in enumerate(seqlens) if s in by_seqlen]
        ys = [by_seqlen[s] for s in seqlens if s in by_seqlen]
        bars = ax.bar(xs, ys, width, label=name, color=colours[name])
        ax.bar_label(bars, fmt="%.0f", fontsize=5, rotation=90, padding=1)
      ax.set_xticks(range(len(seqlens)), [_seqlen_label(s) for s in seqlens])
      ax.set_title(f"head dim {head_dim}, {'causal' if causal else 'non-causal'}", fontsize=9)
      ax.set_xlabel("sequence length", fontsize=8)
      ax.set_ylabel("TFLOP/s", fontsize=8)
      ax.margins(y=0.15)
      ax.tick_params(labelsize=7)
  from matplotlib.patches import Patch

  shown = [n for n in peer_names if any(r.peer == n for r in chosen)]
  figure.legend([Patch(color=colours[n]) for n in shown], shown, loc="lower center", ncol=len(shown), fontsize=8,
                frameon=False)
  figure.suptitle(f"Attention {pass_name}, {dtype} — {_subtitle(environment)}", fontsize=10)
  figure.tight_layout(rect=(0, 0.05, 1, 1))
  return figure


def _ratio_figure(plt, results: list[Result], dtype: str, environment: dict):
  rows = {key: by_peer for key, by_peer in by_row(results).items() if key[0] == dtype}
  passes = [p for p in PASSES if any(key[1] == p for key in rows)]
  figure, axes = plt.subplots(1, len(passes), squeeze=False, sharey=True,
                              figsize=(PANEL_INCHES[0] * len(passes), PANEL_INCHES[1] * 1.3))
  for ax, pass_name in zip(axes[0], passes):
    series: dict[tuple[int, bool], list[tuple[int, float]]] = {}
    for (_, p, head_dim, seqlen, causal, _, _), by_peer in rows.items():
      ratio = ratio_to_best(by_peer)
      if p == pass_name and ratio is not None:
        series.setdefault((head_dim, causal), []).append((seqlen, ratio))
    for (head_dim, causal), points in sorted(series.items()):
      xs, ys = zip(*sorted(points))
      ax.plot(xs, ys, marker="o", linestyle="--" if causal else "-",
              label=f"D{head_dim}{' causal' if causal else ''}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log", base=2)
    seqlens = sorted({x for points in series.values() for x, _ in points})
    ax.set_xticks(seqlens, [_seqlen_label(s) for s in seqlens])
    ax.minorticks_off()
    ax.set_title(pass_name, fontsize=9)
    ax.set_xlabel("sequence length", fontsize=8)
    ax.tick_params(labelsize=7)
  axes[0][0].set_ylabel(f"{OURS} / best other peer", fontsize=8)
  if axes[0][-1].get_lines()[1:]:  # the reference line at 1 is always there
    axes[0][-1].legend(fontsize=7)
  figure.suptitle(f"{OURS} over the fastest other implementation, {dtype} — {_subtitle(environment)}", fontsize=10)
  figure.tight_layout()
  return figure


def write(results: list[Result], environment: dict, out_dir: str) -> list[str]:
  """Writes the speed figures and ratio summaries into out_dir; returns the paths written."""
  plt = require_matplotlib()
  os.makedirs(out_dir, exist_ok=True)
  peer_names = _peer_order(results)
  palette = plt.get_cmap("tab10")
  colours = {name: palette(i % palette.N) for i, name in enumerate(peer_names)}
  written = []
  for dtype in sorted({r.dtype for r in results if r.tflops is not None}):
    for pass_name in PASSES:
      if any(r.dtype == dtype and r.pass_name == pass_name and r.tflops is not None for r in results):
        figure = _speed_figure(plt, results, dtype, pass_name, peer_names, colours, environment)
        written.append(os.path.join(out_dir, f"{dtype}_{_slug(pass_name)}.png"))
        figure.savefig(written[-1], dpi=DPI)
        plt.close(figure)
    figure = _ratio_figure(plt, results, dtype, environment)
    written.append(os.path.join(out_dir, f"{dtype}_ratio.png"))
    figure.savefig(written[-1], dpi=DPI)
    plt.close(figure)
  return written


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) < 2 or any(a in ("-h", "--help") for a in argv):
    print(__doc__, file=sys.stderr)
    return 2
  *paths, out_dir = argv
  try:
    written = write(*load(paths), out_dir)
  except ImportError as e:
    print(e, file=sys.stderr)
    return 1
  print("\n".join(written))
  return 0


if __name__ == "__main__":
  sys.exit(main())
