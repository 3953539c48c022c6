#!/usr/bin/env bash
# A/B of backward harness builds on one GPU, for one device call:
#   ROUNDS=3 tests/cuda/bwd_ab.sh OUT_DIR base v1 ...      (builds in build/bwd_<name>/flash_bwd_sm90_test, from
#                                                           tests/cuda/build_sm90_bwd_test.sh with TILES=128)
# Runs `quick` of each build, then `bench 128` of every build in alternating rounds (so clock and power drift hit
# them alike) into OUT_DIR/ab.txt, and prints the median TFLOP/s per shape and the ratio of each build to the first.
set -u
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT_DIR="$1"; shift
nvidia-smi --query-gpu=name,clocks.sm,power.draw,temperature.gpu --format=csv
for v in "$@"; do echo "== quick $v"; timeout 200 "$ROOT/build/bwd_$v/flash_bwd_sm90_test" quick 2>&1 | tail -2; done
for r in $(seq "${ROUNDS:-3}"); do
  for v in "$@"; do echo "== $v round $r"; "$ROOT/build/bwd_$v/flash_bwd_sm90_test" bench 128; done
done > "$OUT_DIR/ab.txt" 2>&1
python3 "$ROOT/tests/cuda/ab_table.py" "$OUT_DIR/ab.txt"
