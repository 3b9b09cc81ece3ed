#!/usr/bin/env bash
# A GPU session in ONE command of at most 8 minutes on an H100 (a lease is ~15 min in all, 10 min per command).
# Stages run in the order of what we most need to know; each has its own time budget (`timeout`) and writes
# $OUT/<stage>.log as it runs and $OUT/<stage>.stage.json (exit, seconds, budget) the moment it ends, beside its
# data ($OUT/test-*.xml, bench.json, interop.json: written as each case ends), so a run stopped at its limit
# still returns every finished stage. $OUT/summary.json and summary.md come last. Paste the numbers into
# benchmarks/RESULTS.md with the card's name and the date.
#
#   bash scripts/gpu_session.sh                  # the quick run (below), ~7 min
#   bash scripts/gpu_session.sh --dry-run        # here, on the CPU: every stage's plumbing; card stages skip
#   bash scripts/gpu_session.sh build full-test  # stages by name (a longer lease): any of those listed below
#
# Quick run, budgets (s; they add up to the 480 s run budget) and what we expect on an H100 host (16 cores):
#   card          5  nvidia-smi facts.                                                    expect ~1
#   build       120  pip install -e . for sm_90 only, all cores (timed).                  expect ~60
#                    (the CPU part of _C takes ~4 min on this 2-core, heavily shared machine -> ~40 s on 16
#                    cores; nvcc for all of csrc/cuda at one arch is ~15 s of CPU, files in parallel)
#   backends     25  reidfast.backends() and build_info() as JSON.                        expect ~5
#   test-cuda    50  pytest -m "cuda and not triton": the CUDA backend's cases on the card (float32, float16,
#                    bfloat16 and float64 parameters), one line per test.                 expect ~30
#   test-triton  90  pytest -m triton: the Triton kernels compiled for the card.          expect ~80 (a fresh
#                    machine compiles every kernel variant and autotuning config: ~1-2 s each)
#   bench       100  benchmarks/gpu_headline.py: distance vs torch.mm / torch.cdist at 16384^2 x 2048 (fp32,
#                    TF32, fp16), top-k vs distance + torch.topk, triplet fwd+bwd B 512-8192 x 2048 vs the torch
#                    formula and pytorch-metric-learning, evaluation and re-ranking at Market scale.  expect ~80
#                    (distance: 3 precisions x 5 providers x 6 runs x ~20-50 ms; Triton autotuning ~20 s; the
#                    Market re-ranking reference on the host CPU ~20 s)
#   interop      35  benchmarks/gpu_interop.py: cupy round trip, AMP, 2-process NCCL DDP (skips with 1 GPU).
#                    expect ~15
#   memcheck     55  compute-sanitizer memcheck on scripts/exercise_cuda_kernels.py.    expect ~40
#                    (small launches; memcheck slows kernels 10-100x and adds ~10 s of start-up)
#   racecheck, synccheck  60 each, only if the run budget still holds them whole (stages ending early).
# How estimated: CPU times measured here scaled by core count (build), launch counts x kernel times from the
# kernels' flop counts at H100 peak (bench), compute-sanitizer's documented slowdowns. Nothing has run on a
# card yet: the first run's *.stage.json files replace these guesses. Every budget is also cut to what the
# run budget has left, so the whole run stays under RUN_BUDGET (480 s) plus the summary.
#
# Full stages (the old ones, for a longer lease): full-test (the whole test suite), sanitize-all (memcheck,
# racecheck, synccheck, initcheck), bench-all (the whole pytest-benchmark suite + report.py).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-gpu-out}
RUN_BUDGET=${RUN_BUDGET:-480}  # seconds for the whole quick run
mkdir -p "$OUT"
START=$SECONDS
DRY_RUN=0
status=0
STAGES_RUN=()

have_card() { [ "$DRY_RUN" -eq 0 ] && command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; }

stage_json() {  # name, exit code, seconds, budget, note
  printf '{"stage": "%s", "exit": %s, "seconds": %s, "budget_s": %s, "timed_out": %s, "note": "%s"}\n' \
    "$1" "$2" "$3" "$4" "$([ "$2" -eq 124 ] && echo true || echo false)" "$5" >"$OUT/$1.stage.json"
  STAGES_RUN+=("$1")
}

skip_stage() {  # name, reason
  echo "== $1: skipped ($2)"
  echo "skipped: $2" >"$OUT/$1.log"
  stage_json "$1" 0 0 0 "skipped: $2"
}

# run_stage name budget command...: the command under `timeout budget` (cut to what the run budget has left),
# output in $OUT/<name>.log, then $OUT/<name>.stage.json.
run_stage() {
  local name=$1 budget=$2
  shift 2
  local left=$((RUN_BUDGET - (SECONDS - START) - 5))  # 5 s for the summary
  if [ "$left" -lt 10 ]; then
    skip_stage "$name" "the run budget is spent"
    return
  fi
  [ "$budget" -le "$left" ] || budget=$left
  echo "== $name (budget ${budget} s): $*"
  local began=$SECONDS
  timeout --kill-after=10 "$budget" "$@" >"$OUT/$name.log" 2>&1
  local code=$?
  tail -n 15 "$OUT/$name.log"
  echo "== $name: exit $code after $((SECONDS - began)) s"
  stage_json "$name" "$code" "$((SECONDS - began))" "$budget" ""
  [ "$code" -eq 0 ] || status=$code
}

stage_card() {
  if have_card; then
    run_stage card 5 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  else
    skip_stage card "no card"
  fi
}

stage_build() {
  if [ "$DRY_RUN" -eq 1 ]; then
    skip_stage build "dry run: would run REIDFAST_CUDA=1 CMAKE_CUDA_ARCHITECTURES=90 pip install --no-build-isolation --no-deps -e ."
    return
  fi
  run_stage build 120 env REIDFAST_CUDA=1 CMAKE_CUDA_ARCHITECTURES=90 REIDFAST_CUDA_EMULATOR=0 \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" pip install --no-build-isolation --no-deps -e .
}

stage_backends() {
  run_stage backends 25 python -c "import json, reidfast
print(json.dumps({'backends': {n: {'available': i.available, 'devices': list(i.devices), 'reason': i.reason}
                  for n, i in reidfast.backends().items()}, 'build_info': reidfast.build_info()}, default=str))"
}

# The card's tests by marker, the CUDA kernels' first: Triton compiles every kernel variant and autotuning
# config on a fresh machine, so its stage is the one most likely to run out of time. -v writes one line per
# test as it ends (the JUnit XML only comes at the end).
card_tests() {  # name, budget, marker expression
  if have_card; then
    run_stage "$1" "$2" python -m pytest -v --tb=short -m "$3" -p no:cacheprovider --junitxml="$OUT/$1.xml" tests
  else  # the selection only (pytest's exit 5, "none selected", is expected without a card: no `cuda` cases)
    # shellcheck disable=SC2016  # $1 and $code belong to the inner shell
    run_stage "$1" "$2" bash -c 'python -m pytest -q -m "$1" -p no:cacheprovider --collect-only tests; code=$?
      [ "$code" -eq 5 ] && echo "none selected without a card" && exit 0; exit "$code"' _ "$3"
  fi
}
stage_test() {
  card_tests test-cuda 50 "cuda and not triton"
  card_tests test-triton 90 "triton"
}

stage_bench() {
  if have_card; then
    run_stage bench 100 python benchmarks/gpu_headline.py --out "$OUT/bench.json"
  else
    run_stage bench 100 python benchmarks/gpu_headline.py --out "$OUT/bench.json" --dry-run
  fi
}

stage_interop() {
  run_stage interop 35 python benchmarks/gpu_interop.py --out "$OUT/interop.json"
}

sanitize() {  # tool, budget
  if ! have_card || ! command -v compute-sanitizer >/dev/null; then
    skip_stage "$1" "no card or no compute-sanitizer"
    return
  fi
  run_stage "$1" "$2" compute-sanitizer --tool "$1" --error-exitcode 1 python scripts/exercise_cuda_kernels.py
}

stage_optional_sanitizers() {  # racecheck and synccheck only when the run budget still holds them whole
  local tool
  for tool in racecheck synccheck; do
    if [ $((RUN_BUDGET - (SECONDS - START) - 5)) -ge 60 ]; then
      sanitize "$tool" 60
    else
      skip_stage "$tool" "not enough of the run budget left"
    fi
  done
}

stage_quick() {
  stage_card
  stage_build
  stage_backends
  stage_test
  stage_bench
  stage_interop
  sanitize memcheck 55
  stage_optional_sanitizers
}

# The old long stages (no run budget: RUN_BUDGET is raised for them).
stage_full_test() {
  run_stage full-test 600 python -m pytest -q tests -p no:cacheprovider --junitxml="$OUT/full-test.xml"
}
stage_sanitize_all() {
  local tool
  for tool in memcheck racecheck synccheck initcheck; do sanitize "$tool" 150; done
}
stage_bench_all() {
  run_stage bench-all 600 python -m pytest benchmarks -q -p no:cacheprovider --benchmark-json="$OUT/bench-all.json"
  run_stage report 30 python benchmarks/report.py "$OUT/bench-all.json"
  cp "$OUT/report.log" "$OUT/report.md"
}

write_summary() {
  {
    echo "["
    local first=1 stage
    for stage in "${STAGES_RUN[@]}"; do
      [ $first -eq 1 ] || echo ","
      first=0
      tr -d '\n' <"$OUT/$stage.stage.json"
    done
    echo "]"
  } >"$OUT/summary.json"
  {
    echo "# GPU session $(date -u +%Y-%m-%dT%H:%MZ), $((SECONDS - START)) s, exit $status"
    [ -f "$OUT/card.log" ] && sed 's/^/    /' "$OUT/card.log"
    echo
    echo "| stage | exit | seconds | budget | note |"
    echo "|---|---|---|---|---|"
    python3 -c "import json, sys
for s in json.load(open(sys.argv[1])):
    print(f\"| {s['stage']} | {s['exit']} | {s['seconds']} | {s['budget_s']} | {s['note']} |\")" "$OUT/summary.json"
  } >"$OUT/summary.md"
  cat "$OUT/summary.md"
}

if [ "${1:-}" = "--dry-run" ]; then
  DRY_RUN=1
  shift
fi
[ $# -gt 0 ] || set -- quick
for stage in "$@"; do
  case $stage in
    quick) stage_quick ;;
    card | build | backends | test | bench | interop) "stage_$stage" ;;
    memcheck | racecheck | synccheck | initcheck) sanitize "$stage" 150 ;;
    full-test) RUN_BUDGET=100000; stage_full_test ;;
    sanitize-all) RUN_BUDGET=100000; stage_sanitize_all ;;
    bench-all) RUN_BUDGET=100000; stage_bench_all ;;
    *) echo "unknown stage '$stage' (quick, card, build, backends, test, bench, interop, memcheck, racecheck," \
      "synccheck, initcheck, full-test, sanitize-all, bench-all)" >&2; exit 2 ;;
  esac
done
write_summary
exit $status
