#!/usr/bin/env bash
# One device call: build, then the chosen steps (default: tests decode), logs under $OUT, rows printed as measured.
#   bash scripts/gpu_session.sh [tests] [gemm] [decode] [splitk] [moe] [e2e] [e2e-profile] [e2e-batches]
#   tests        GPU tests of the kernels, passes and the compiled CUDA models (~3-4 min), SASS register-hazard check
#   gemm         the dense GEMM table (benchmarks/bench_gemm.py): marlin, auto, cuBLAS, floor at M = 1 .. 4096
#   decode       every GEMM tactic on the Llama-3-8B decode GEMMs (q/k/v and gate/up merged), M = 1, 8, 16, 32
#   e2e          32-layer end-to-end benchmark: decode b = 1, prefill 2048, memory, closeness (~6.5 min)
#   e2e-batches  the same model, decode b = 8 and 32 with release_source_weights (~4 min)
#   splitk       split-K paths A/B (workspace vs clusters) per config, M = 1 .. 256 (benchmarks/bench_split_k.py)
#   e2e-profile  the 32-layer decode step at b = 1, profiled: top kernels by GPU time, both models (~4 min)
#   memcheck     compute-sanitizer memcheck over every dense config and the MoE path (scripts/memcheck_kernels.py)
#   ncu-rows     ncu: gemv16 at M = 8 / 16 / 16 with copied rows, gemv16b at 16, gemv8b at 8 (profile_gemv_rows.py)
#   ncu-wgmma    ncu with per-instruction stall samples (SourceCounters) and the memory sections (shared-memory
#                bank conflicts, L1/L2 hit rates) of the wgmma configs at M = 64 / 256
#                (PROBLEMS: profile_gemm.py problems); SASS source page $OUT/ncu_src.csv, phases by ncu_phases.py
#   tactics      every GEMM tactic on SHAPES (NxK,...) at MS (M,...) (benchmarks/bench_tactics.py)
#   wgmma-ceiling  the register-A wgmma pattern of the wgmma kernel alone and under a dequantization-sized ALU load
#                (benchmarks/wgmma_ceiling.py)
#   moe          every MoE tactic, auto and BF16 grouped_mm on the Mixtral and Qwen3-MoE layers (~2 min)
# A device call runs at most 10 minutes: e2e and e2e-batches go in separate calls.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}; mkdir -p "$OUT"
steps=${*:-tests decode}
python3 -c "import expecttest" 2>/dev/null || python3 -m pip install -q --no-deps .wheels/*.whl
t=$(date +%s); MAX_JOBS=$(nproc) python3 -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
  || { grep -E "error" "$OUT/build.log" | head; exit 1; }
echo "build $(( $(date +%s) - t )) s"
if [[ " $steps " == *" tests "* ]]; then
  t=$(date +%s)
  # TESTS (optional): pytest arguments instead of the full GPU set, e.g. TESTS="tests/gpu/test_marlin_gemm.py -k cluster"
  default_tests='tests/gpu tests/backend/test_cuda.py tests/passes/test_merge_siblings.py
    tests/backend/test_models.py::test_transformers_decode_steps_update_the_static_kv_cache'
  # shellcheck disable=SC2086  # word splitting of the pytest arguments is intended
  timeout 320 python3 -m pytest -q -p no:cacheprovider ${TESTS:-$default_tests} > "$OUT/tests.log" 2>&1
  echo "tests rc=$? $(( $(date +%s) - t )) s"; tail -1 "$OUT/tests.log"; grep -E "^FAILED|^ERROR" "$OUT/tests.log" | head
  python3 benchmarks/sass_stats.py > "$OUT/sass_stats.log" 2>&1
  echo "sass_stats rc=$? (1: a wgmma register hazard)"; grep -c "register_hazards=0" "$OUT/sass_stats.log"
fi
if [[ " $steps " == *" memcheck "* ]]; then
  t=$(date +%s)
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 300 compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 20 \
    python3 scripts/memcheck_kernels.py > "$OUT/memcheck.log" 2>&1
  echo "memcheck rc=$? (9: an out-of-bounds access) $(( $(date +%s) - t )) s"; tail -25 "$OUT/memcheck.log"
fi
if [[ " $steps " == *" ncu-rows "* ]]; then
  t=$(date +%s)
  timeout 300 ncu --clock-control none -k regex:marlin_gemv_kernel --launch-skip 5 --launch-count 5 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
    python3 benchmarks/profile_gemv_rows.py > "$OUT/ncu_rows.log" 2>&1
  echo "ncu-rows rc=$? $(( $(date +%s) - t )) s"; grep -E "launch order|Duration|Hit Rate|Throughput|Stall" \
    "$OUT/ncu_rows.log" | head -60
  # The memory tables (instructions, requests, wavefronts, sectors per memory space) in a run of their own, so
  # the sections above come back even if this section is missing from the installed ncu.
  timeout 300 ncu --clock-control none -k regex:marlin_gemv_kernel --launch-skip 5 --launch-count 5 \
    --section MemoryWorkloadAnalysis_Tables python3 benchmarks/profile_gemv_rows.py > "$OUT/ncu_tables.log" 2>&1
  echo "ncu tables rc=$?"; grep -E "marlin_gemv_kernel|Global Load|Shared|Wavefronts" "$OUT/ncu_tables.log" | head -40
fi
if [[ " $steps " == *" ncu-wgmma "* ]]; then
  t=$(date +%s)
  problems=${PROBLEMS:-4096x4096x256:wg128x256w4,4096x4096x256:wg256x128,28672x8192x64:wg64x512,8192x8192x256:wg128x256,4096x4096x256:cublas}
  # KERNELS: ncu's kernel regex, e.g. 'marlin_gemv|nvjet|sm90' for PROBLEMS=4096x4096x1:gemv8b,4096x4096x1:cublas
  timeout 300 ncu --clock-control none -k regex:"${KERNELS:-marlin_wgmma|nvjet|sm90}" \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section LaunchStats \
    --section Occupancy --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section SourceCounters \
    -o "$OUT/wgmma" -f \
    python3 benchmarks/profile_gemm.py --problems "$problems" > "$OUT/ncu_wgmma_run.log" 2>&1
  echo "ncu-wgmma rc=$? $(( $(date +%s) - t )) s"; tail -3 "$OUT/ncu_wgmma_run.log"
  ncu -i "$OUT/wgmma.ncu-rep" --print-summary none > "$OUT/ncu_wgmma.log" 2>&1
  grep -E "marlin|nvjet|Duration|SM Busy|Issue Slots|Stall|Throughput|Executed Ipc|Registers|Warp Cycles|Bank|Hit" \
    "$OUT/ncu_wgmma.log" | head -120
  ncu -i "$OUT/wgmma.ncu-rep" --page source --csv --print-source sass > "$OUT/ncu_src.csv" 2>&1
  echo "source page rc=$? $(wc -l < "$OUT/ncu_src.csv") lines"
  python3 benchmarks/ncu_phases.py "$OUT/ncu_src.csv" | tee "$OUT/ncu_phases.log"
fi
if [[ " $steps " == *" gemm "* ]]; then
  t=$(date +%s)
  timeout 300 python3 benchmarks/bench_gemm.py --csv "$OUT/bench.csv" > "$OUT/bench_gemm.log" 2>&1
  echo "bench_gemm rc=$? $(( $(date +%s) - t )) s"; grep -vE "^wrote" "$OUT/bench_gemm.log" | tail -42
fi
# bench_tactics.py on shapes $2 at M values $3 within $4 s, into $OUT/$1.csv / .log; the last $5 lines printed
run_tactics() {
  local t; t=$(date +%s)
  timeout "$4" python3 benchmarks/bench_tactics.py --shapes "$2" --ms "$3" --csv "$OUT/$1.csv" > "$OUT/$1.log" 2>&1
  echo "$1 rc=$? $(( $(date +%s) - t )) s"; grep -vE "^wrote" "$OUT/$1.log" | tail -"$5"
}
if [[ " $steps " == *" decode "* ]]; then
  run_tactics decode_tactics 6144x4096,4096x4096,28672x4096,4096x14336 1,8,16,32 200 22
fi
if [[ " $steps " == *" tactics "* ]]; then
  run_tactics tactics "${SHAPES:-4096x4096,8192x8192}" "${MS:-64,256}" 300 30
fi
if [[ " $steps " == *" wgmma-ceiling "* ]]; then
  t=$(date +%s)
  timeout 240 python3 benchmarks/wgmma_ceiling.py > "$OUT/wgmma_ceiling.log" 2>&1
  echo "wgmma-ceiling rc=$? $(( $(date +%s) - t )) s"; tail -12 "$OUT/wgmma_ceiling.log"
fi
if [[ " $steps " == *" splitk "* ]]; then
  t=$(date +%s)
  timeout 240 python3 benchmarks/bench_split_k.py > "$OUT/split_k.log" 2>&1
  echo "split_k rc=$? $(( $(date +%s) - t )) s"; cat "$OUT/split_k.log"
fi
if [[ " $steps " == *" e2e-profile "* ]]; then
  t=$(date +%s)
  timeout "${E2E_TIMEOUT:-400}" python3 benchmarks/bench_e2e.py --layers 32 --batches 1 --skip-prefill \
    --skip-closeness --profile > "$OUT/e2e32_profile.log" 2>&1
  echo "e2e32 profile rc=$? $(( $(date +%s) - t )) s"; grep -E "^device|^ROW" "$OUT/e2e32_profile.log"
fi
if [[ " $steps " == *" moe "* ]]; then
  t=$(date +%s)
  timeout 300 python3 benchmarks/bench_moe.py --csv "$OUT/moe.csv" > "$OUT/moe.log" 2>&1
  echo "moe rc=$? $(( $(date +%s) - t )) s"; tail -16 "$OUT/moe.log"
fi
if [[ " $steps " == *" e2e "* ]]; then
  t=$(date +%s)
  timeout "${E2E_TIMEOUT:-480}" python3 benchmarks/bench_e2e.py --layers 32 --batches 1 --prefill 2048 \
    > "$OUT/e2e32.log" 2>&1
  echo "e2e32 rc=$? $(( $(date +%s) - t )) s"; grep -E "^device|^ROW" "$OUT/e2e32.log"
fi
if [[ " $steps " == *" e2e-batches "* ]]; then
  t=$(date +%s)
  timeout "${E2E_TIMEOUT:-480}" python3 benchmarks/bench_e2e.py --layers 32 --batches 8,32 --skip-prefill \
    --skip-closeness --release > "$OUT/e2e32_batches.log" 2>&1
  echo "e2e32 batches rc=$? $(( $(date +%s) - t )) s"; grep -E "^device|^ROW" "$OUT/e2e32_batches.log"
fi
