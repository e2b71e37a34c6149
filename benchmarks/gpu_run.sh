#!/usr/bin/env bash
# One GPU session: build the CUDA extension, run the GPU tests (and the CPU Marlin tests), run the GEMM
# benchmark. Logs go to $OUT (default ./out): build.log, tests.log, bench.log, bench.csv.
#   bash benchmarks/gpu_run.sh [--quick]      (--quick: two benchmark shapes)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"

start=$(date +%s)
if ! "$PY" -m pip install --no-build-isolation --no-deps -e . -v >"$OUT/build.log" 2>&1; then
  echo "BUILD FAILED"; grep -E "error|Error" "$OUT/build.log" | head -40; exit 1
fi
echo "build: $(( $(date +%s) - start )) s"
grep -E "registers|spill" "$OUT/build.log" | sort | uniq -c | head -20
"$PY" -c "from nvfp4_compile.ops import _C; print('extension loaded:', _C.LOADED, _C.LOAD_ERROR or '')"
mkdir -p "$OUT/sass" && "$PY" benchmarks/sass_stats.py "$OUT/sass" 2>&1 | tee "$OUT/sass_stats.txt"

start=$(date +%s)
timeout "${TEST_TIMEOUT:-240}" "$PY" -m pytest -q -p no:cacheprovider tests/gpu tests/formats/test_marlin_layout.py \
  tests/ops/test_marlin_ops.py 2>&1 | tee "$OUT/tests.log" | tail -25
echo "tests: $(( $(date +%s) - start )) s"

start=$(date +%s)
timeout "${BENCH_TIMEOUT:-220}" "$PY" benchmarks/bench_gemm.py --csv "$OUT/bench.csv" "$@" 2>&1 | tee "$OUT/bench.log"
echo "bench: $(( $(date +%s) - start )) s"
