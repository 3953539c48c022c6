#!/usr/bin/env bash
# Builds the standalone Hopper forward test (tests/cuda/flash_fwd_sm90_test.cu) with nvcc for sm_90a, and the
# shared library the peer benchmark loads (libflash_fwd_sm90_bf16.so: the bf16 kernels + flash_fwd_sm90_capi.cu):
#   tests/cuda/build_sm90_test.sh [OUT_DIR]      (default build/sm90_test; JOBS=2 parallel compiles)
# HEAD_DIMS="64 128" compiles only those head-dim tiles, LIB_ONLY=1 only the library (variants for the peer
# benchmark); the standalone test needs every tile.
# Needs the CUTLASS headers of the nvidia-cutlass package (CUTLASS_INCLUDE or python3 -c 'import cutlass_library').
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${1:-$ROOT/build/sm90_test}"
JOBS="${JOBS:-2}"
HEAD_DIMS="${HEAD_DIMS:-64 128 256}"
LIB_ONLY="${LIB_ONLY:-0}"
PYTHON="${PYTHON:-python3}"
CUTLASS_INCLUDE="${CUTLASS_INCLUDE:-$("$PYTHON" -c 'import cutlass_library, os; print(os.path.join(os.path.dirname(cutlass_library.__file__), "source", "include"))')}"
mkdir -p "$OUT"
FLAGS=(-std=c++17 -O3 -DNDEBUG -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr
       -DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED -I"$ROOT/csrc" -I"$CUTLASS_INCLUDE" -Xptxas=-v -Xcompiler -fPIC)
SOURCES=("$ROOT/tests/cuda/flash_fwd_sm90_capi.cu")
for d in $HEAD_DIMS; do
  FLAGS+=(-DJAX_FLASH_SM90_TILE_$d=1)
  SOURCES+=("$ROOT/csrc/sm90/flash_fwd_sm90_hdim${d}_bf16.cu")
  [ "$LIB_ONLY" = 1 ] || SOURCES+=("$ROOT/csrc/sm90/flash_fwd_sm90_hdim${d}_fp16.cu")
done
[ "$LIB_ONLY" = 1 ] || SOURCES+=("$ROOT/csrc/sm90/flash_fwd_sm90.cu" "$ROOT/tests/cuda/flash_fwd_sm90_ablation.cu"
                                 "$ROOT/tests/cuda/flash_fwd_sm90_test.cu")
printf '%s\n' "${SOURCES[@]}" | xargs -P "$JOBS" -I{} sh -c \
  'f="{}"; o="'"$OUT"'/$(basename "$f" .cu).o"; nvcc '"${FLAGS[*]}"' -c "$f" -o "$o" > "$o.log" 2>&1 || { cat "$o.log"; exit 255; }'
[ "$LIB_ONLY" = 1 ] || nvcc -gencode=arch=compute_90a,code=sm_90a "$OUT"/*.o -o "$OUT/flash_fwd_sm90_test"
# -Bsymbolic: two builds of the library can be loaded side by side, each calling its own kernels.
nvcc -shared -gencode=arch=compute_90a,code=sm_90a -Xlinker -Bsymbolic "$OUT"/flash_fwd_sm90_hdim*_bf16.o \
     "$OUT/flash_fwd_sm90_capi.o" -o "$OUT/libflash_fwd_sm90_bf16.so"
echo "built $OUT/libflash_fwd_sm90_bf16.so (head dims $HEAD_DIMS)$([ "$LIB_ONLY" = 1 ] || echo " and $OUT/flash_fwd_sm90_test")"
