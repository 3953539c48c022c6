#!/usr/bin/env bash
# Builds the standalone Hopper backward test (tests/cuda/flash_bwd_sm90_test.cu) with nvcc for sm_90a:
#   tests/cuda/build_sm90_bwd_test.sh [OUT_DIR]      (default build/sm90_bwd_test; JOBS=2 parallel compiles)
# TILES (default "64 128 256") picks the head-dim tiles; the forward's dispatch and kernels of those tiles are compiled
# too (the backward shares the forward's problem checks). Needs the CUTLASS headers of the nvidia-cutlass package.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${1:-$ROOT/build/sm90_bwd_test}"
JOBS="${JOBS:-2}"
TILES="${TILES:-64 128 256}"
PYTHON="${PYTHON:-python3}"
CUTLASS_INCLUDE="${CUTLASS_INCLUDE:-$("$PYTHON" -c 'import cutlass_library, os; print(os.path.join(os.path.dirname(cutlass_library.__file__), "source", "include"))')}"
mkdir -p "$OUT"
FLAGS=(-std=c++17 -O3 -DNDEBUG -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr
       -DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED -I"$ROOT/csrc" -I"$CUTLASS_INCLUDE" -Xptxas=-v)
SOURCES=("$ROOT/csrc/sm90/flash_fwd_sm90.cu" "$ROOT/csrc/sm90/flash_bwd_sm90.cu" "$ROOT/tests/cuda/flash_bwd_sm90_test.cu")
for t in $TILES; do
  FLAGS+=("-DJAX_FLASH_SM90_TILE_$t=1")
  SOURCES+=("$ROOT"/csrc/sm90/flash_fwd_sm90_hdim${t}_*.cu "$ROOT"/csrc/sm90/flash_bwd_sm90_hdim${t}_*.cu)
done
printf '%s\n' "${SOURCES[@]}" | xargs -P "$JOBS" -I{} sh -c \
  'f="{}"; o="'"$OUT"'/$(basename "$f" .cu).o"; nvcc '"${FLAGS[*]}"' -c "$f" -o "$o" > "$o.log" 2>&1 || { cat "$o.log"; exit 255; }'
nvcc -gencode=arch=compute_90a,code=sm_90a "$OUT"/*.o -o "$OUT/flash_bwd_sm90_test"
echo "built $OUT/flash_bwd_sm90_test"
