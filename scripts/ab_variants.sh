#!/usr/bin/env bash
# A/B of kernel variants in one device call. Each git ref becomes a source tree under .ab/<name> (prepare, on this
# machine); on the device every tree is built in place, all at once, and measured by bench_tactics.py on the same
# shapes, one variant after another; benchmarks/ab_compare.py prints the tactics side by side.
#   bash scripts/ab_variants.sh prepare main wip/candidate ...   names: the ref with '/' -> '-'
#   SHAPES=4096x4096 MS=64,256 bash scripts/ab_variants.sh run  on the device; the run call carries .ab and .wheels
# $OUT gets a CSV per variant, ab_tests.log and ab_compare.log (few files: the device returns only so many); the
# build, test and tactics logs stay in .ab/<name>/. Before the timing, each variant runs the GPU tests of every
# tile config (AB_TESTS: another pytest -k filter; AB_TEST_TIMEOUT seconds per variant, default 200).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)  # absolute: the builds run in the variant trees
case "${1:-}" in
  prepare)
    shift; rm -rf .ab; mkdir -p .ab
    for ref in "$@"; do
      name=${ref//\//-}; mkdir -p ".ab/$name"
      git archive "$ref" | tar -x -C ".ab/$name" && echo "$name $(git rev-parse --short "$ref")" | tee -a .ab/refs
    done ;;
  run)
    variants=$(cut -d' ' -f1 .ab/refs); n=$(wc -l < .ab/refs)
    python3 -c "import expecttest" 2>/dev/null || python3 -m pip install -q --no-deps .wheels/*.whl
    t=$(date +%s)
    # One variant's build is bound by its two GEMM translation units, so the builds share the cores side by side.
    for v in $variants; do
      (cd ".ab/$v" && MAX_JOBS=$(( $(nproc) / n + 1 )) python3 setup.py build_ext --inplace > build.log 2>&1
       echo "build $v rc=$?"; grep -m5 -E " error|Error" build.log) &
    done
    wait; echo "builds $(( $(date +%s) - t )) s"
    for v in $variants; do
      t=$(date +%s)
      # A fast wrong kernel is no candidate: every tile config against the references first (AB_TESTS: -k filter).
      # From the variant's tree: pytest puts its rootdir first on sys.path; from here it would import ./nvfp4_compile.
      (cd ".ab/$v" && PYTHONPATH=$PWD timeout "${AB_TEST_TIMEOUT:-200}" python3 -m pytest -q -p no:cacheprovider \
        tests/gpu/test_marlin_gemm.py -k "${AB_TESTS:-identity_gemm or every_tile_config or wgmma_configs_on_model_shapes}" \
        > test.log 2>&1)
      echo "tests $v rc=$? $(( $(date +%s) - t )) s: $(tail -1 ".ab/$v/test.log")" | tee -a "$OUT/ab_tests.log"
      grep -E "^FAILED|^ERROR" ".ab/$v/test.log" | head -20 >> "$OUT/ab_tests.log"
      t=$(date +%s)
      PYTHONPATH="$PWD/.ab/$v" timeout "${AB_TIMEOUT:-150}" python3 ".ab/$v/benchmarks/bench_tactics.py" \
        --shapes "${SHAPES:-4096x4096,8192x8192}" --ms "${MS:-64,256}" --csv "$OUT/ab_$v.csv" \
        > ".ab/$v/tactics.log" 2>&1
      echo "tactics $v rc=$? $(( $(date +%s) - t )) s"
    done
    # shellcheck disable=SC2046  # one argument per variant is intended
    python3 benchmarks/ab_compare.py $(for v in $variants; do echo "$OUT/ab_$v.csv"; done) \
      | tee "$OUT/ab_compare.log" ;;
  *) echo "usage: $0 prepare REF... | run" >&2; exit 2 ;;
esac
