#!/bin/bash
# Regenerates the results in this folder on one GPU, within a fixed time: the numerical-error and memory experiments,
# the bf16 grid (all head dims), then fp16 at head dim 128 with the time left. Each JSON is rewritten after every
# section or shape, so a timeout keeps what finished. Afterwards, without a GPU:
#   python -m jax_flash.bench.plot OUT/bench_bf16.json OUT/bench_fp16.json jax_flash/bench/results/
#   python -m jax_flash.bench.report OUT/*.json
# Usage: run_suite.sh OUT_DIR REVISION   (END_S: seconds the whole run may take, default 560; FP16_S: fp16's share)
set -u
OUT_DIR="$1"; REV="$2"
END=${END_S:-560}; FP16=${FP16_S:-90}
SETUP_S=50  # per process: start, imports, and the shape in flight when the time limit passes
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
Q="--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,power.limit --format=csv"
nvidia-smi $Q > "$OUT_DIR/run.log"
timeout 140 python3 -m jax_flash.bench --no-speed --numerics --memory --dtypes float16 bfloat16 --revision "$REV" \
  --json "$OUT_DIR/numerics_memory.json" >> "$OUT_DIR/run.log" 2>&1
echo "numerics+memory rc=$? at ${SECONDS}s" | tee -a "$OUT_DIR/run.log"
# grid NAME SECONDS ARGS...: one speed run that must end within SECONDS (skipped when too little time is left).
grid() {
  local name=$1 seconds=$2; shift 2
  if (( seconds <= 2 * SETUP_S )); then
    echo "$name skipped: ${seconds}s left" | tee -a "$OUT_DIR/run.log"; return
  fi
  timeout "$seconds" python3 -m jax_flash.bench "$@" --seconds-per-point 0.1 --time-limit $((seconds - SETUP_S)) \
    --revision "$REV" --json "$OUT_DIR/bench_$name.json" > "$OUT_DIR/bench_$name.md" 2>> "$OUT_DIR/run.log"
  echo "$name rc=$? at ${SECONDS}s" | tee -a "$OUT_DIR/run.log"
}
grid bf16 $((END - SECONDS - FP16)) --dtypes bfloat16
grid fp16 $((END - SECONDS)) --dtypes float16 --head-dims 128
nvidia-smi $Q >> "$OUT_DIR/run.log"
