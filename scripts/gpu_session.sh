#!/usr/bin/env bash
# A GPU session's work in a few long commands (device time is scarce): build the CUDA kernels, run the tests
# on the card, the compute-sanitizer tools on every kernel, and the benchmark suite. Logs, JSON and the
# ratio tables go to $OUT (default ./gpu-out); paste the tables into benchmarks/RESULTS.md with the card name.
#
#   bash scripts/gpu_session.sh build test      # ~5 min
#   bash scripts/gpu_session.sh sanitize bench  # ~10 min
#
# Stages: build, test, sanitize, bench (or all). Each stage runs even if an earlier one failed; the exit
# status is that of the last failure.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
status=0

run_stage() {  # name, command...: runs the command with its output in $OUT/<name>.log, prints the tail
  local name=$1
  shift
  echo "== $name: $*"
  local start=$SECONDS
  "$@" >"$OUT/$name.log" 2>&1
  local code=$?
  tail -n 25 "$OUT/$name.log"
  echo "== $name: exit $code after $((SECONDS - start)) s"
  [ "$code" -eq 0 ] || status=$code
}

stage_build() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >"$OUT/card.txt" 2>&1
  cat "$OUT/card.txt"
  run_stage build env REIDFAST_CUDA=1 CMAKE_CUDA_ARCHITECTURES="${CMAKE_CUDA_ARCHITECTURES:-90}" \
    pip install --no-build-isolation --no-deps -e .
  run_stage backends python -c "import reidfast; print(reidfast.backends()); print(reidfast.build_info())"
}

stage_test() {
  run_stage tests python -m pytest -q tests -p no:cacheprovider --junitxml="$OUT/tests.xml"
}

stage_sanitize() {
  local tool
  for tool in memcheck racecheck synccheck initcheck; do
    run_stage "sanitize-$tool" compute-sanitizer --tool "$tool" --error-exitcode 1 \
      python scripts/exercise_cuda_kernels.py
  done
}

stage_bench() {
  run_stage bench python -m pytest benchmarks -q -p no:cacheprovider --benchmark-json="$OUT/gpu.json"
  run_stage report python benchmarks/report.py "$OUT/gpu.json"
  cp "$OUT/report.log" "$OUT/report.md"
}

[ $# -gt 0 ] || set -- all
for stage in "$@"; do
  case $stage in
    build | test | sanitize | bench) "stage_$stage" ;;
    all) stage_build; stage_test; stage_sanitize; stage_bench ;;
    *) echo "unknown stage '$stage' (build, test, sanitize, bench, all)" >&2; exit 2 ;;
  esac
done
exit $status
