"""Median TFLOP/s per (build, shape) over the rounds of a bwd_ab.sh log, the ratio of each build to the first, and
each build's spread (max - min over the rounds):  python3 tests/cuda/ab_table.py ab.txt"""

import collections
import re
import statistics
import sys

ROUND = re.compile(r"== (\S+) round")
BENCH = re.compile(r"bench D(\d+) seqlen (\d+) (\S+): ([\d.]+) ms\s+([\d.]+) TFLOP/s")


def main(path: str) -> None:
  runs = collections.defaultdict(list)  # (build, D, seqlen, mask) -> TFLOP/s per round
  builds, build = [], None
  for line in open(path):
    if m := ROUND.match(line):
      build = m.group(1)
      if build not in builds:
        builds.append(build)
    elif (m := BENCH.match(line)) and build:
      runs[(build, m.group(1), m.group(2), m.group(3))].append(float(m.group(5)))
  shapes = sorted({key[1:] for key in runs}, key=lambda s: (int(s[0]), s[2], int(s[1])))
  print("D seqlen mask", *builds, "| ratios to", builds[0], "| spreads")
  for shape in shapes:
    rounds = [runs.get((b,) + shape, []) for b in builds]
    medians = [statistics.median(r) if r else float("nan") for r in rounds]
    print(*shape, *(f"{v:.1f}" for v in medians), "|", *(f"{v / medians[0]:.3f}" for v in medians[1:]), "|",
          *(f"{max(r) - min(r):.1f}" if r else "-" for r in rounds))


if __name__ == "__main__":
  main(sys.argv[1])
