#!/usr/bin/env bash
# One call on the GPU machine: build the extension, run the whole test suite (GPU tests included), the demo
# on the GPU, and optionally the end-to-end benchmark. Logs under $OUT (default ./out).
#   bash scripts/gpu_check.sh [--e2e "bench_e2e.py args"]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
PY=${PYTHON:-python3}   # the GPU machine's python3 holds torch; a bare `pip` there is another interpreter
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
"$PY" -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/device.txt"
"$PY" -c "import expecttest" 2>/dev/null || "$PY" -m pip install -q --no-deps .wheels/*.whl

t=$(date +%s)
if ! "$PY" -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  echo "BUILD FAILED"; grep -E "error" "$OUT/build.log" | head -30; exit 1
fi
echo "build: $(( $(date +%s) - t )) s"
"$PY" -c "from nvfp4_compile.ops import _C; print('extension loaded:', _C.LOADED, _C.LOAD_ERROR or '')"

t=$(date +%s)
timeout "${TEST_TIMEOUT:-300}" "$PY" -m pytest -q -ra -p no:cacheprovider tests >"$OUT/tests.log" 2>&1
echo "tests: rc=$? $(( $(date +%s) - t )) s"; grep -E "passed|failed|FAILED|ERROR" "$OUT/tests.log" | tail -15

t=$(date +%s)
timeout "${DEMO_TIMEOUT:-150}" "$PY" -m nvfp4_compile demo --iters 20 >"$OUT/demo.log" 2>&1
echo "demo: rc=$? $(( $(date +%s) - t )) s"; grep -E "^  [a-z_0-9]+ +[0-9a-z.]+$|torch|Error" "$OUT/demo.log" | tail -24

if [ "${1:-}" = "--e2e" ]; then
  t=$(date +%s)
  timeout "${E2E_TIMEOUT:-240}" "$PY" benchmarks/bench_e2e.py ${2:-} >"$OUT/e2e.log" 2>&1
  echo "e2e: rc=$? $(( $(date +%s) - t )) s"; tail -16 "$OUT/e2e.log"
fi
