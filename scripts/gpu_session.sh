#!/usr/bin/env bash
# One device call: build, the GPU tests of the kernels and passes, then the 32-layer end-to-end benchmark
# (rows printed as measured; logs under $OUT). Usage: bash scripts/gpu_session.sh [--e2e-only]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}; mkdir -p "$OUT"
python3 -c "import expecttest" 2>/dev/null || python3 -m pip install -q --no-deps .wheels/*.whl
t=$(date +%s); MAX_JOBS=$(nproc) python3 -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
  || { grep -E "error" "$OUT/build.log" | head; exit 1; }
echo "build $(( $(date +%s) - t )) s"
if [ "${1:-}" != "--e2e-only" ]; then
  t=$(date +%s)
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu tests/backend/test_cuda.py tests/passes/test_merge_siblings.py \
    > "$OUT/tests.log" 2>&1
  echo "tests rc=$? $(( $(date +%s) - t )) s"; tail -1 "$OUT/tests.log"; grep -E "^FAILED|^ERROR" "$OUT/tests.log" | head
fi
t=$(date +%s)
timeout "${E2E_TIMEOUT:-420}" python3 benchmarks/bench_e2e.py --layers 32 --batches 1,32,8 --prefill 2048 \
  > "$OUT/e2e32.log" 2>&1
echo "e2e32 rc=$? $(( $(date +%s) - t )) s"; grep -E "^device|^ROW" "$OUT/e2e32.log"
