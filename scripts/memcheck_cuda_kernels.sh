#!/usr/bin/env bash
# A memcheck of the CUDA kernels without a GPU: builds the CPU emulator (csrc/cuda_emulator) with
# AddressSanitizer and runs every kernel on it (scripts/exercise_cuda_kernels.py, then the emulated CUDA tests).
# An out-of-bounds read or write of a tensor, of shared memory or of a thread's local arrays stops the run
# with the kernel's source line. What compute-sanitizer's memcheck does on a card, minus the device-only
# faults (misaligned vector loads, which the emulator's host loads tolerate).
#
#   bash scripts/memcheck_cuda_kernels.sh            # ~1 min on 2 cores
#
# Needs g++ with libasan, CMake, and the project's Python environment (torch, pybind11, pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${REIDFAST_ASAN_BUILD:-${TMPDIR:-/tmp}/reidfast-emulator-asan}
PYTHON=${PYTHON:-python}

libasan=$(${CXX:-g++} -print-file-name=libasan.so)
if [ ! -e "$libasan" ]; then
  echo "memcheck needs AddressSanitizer's runtime (libasan.so) for ${CXX:-g++}" >&2
  exit 2
fi
pybind11_dir=$("$PYTHON" -c "import pybind11; print(pybind11.get_cmake_dir())")
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DREIDFAST_CUDA=OFF -DREIDFAST_CUDA_EMULATOR=ON \
  -DREIDFAST_CUDA_EMULATOR_ASAN=ON -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$BUILD/lib" \
  -DPython_EXECUTABLE="$(command -v "$PYTHON")" -Dpybind11_DIR="$pybind11_dir" >/dev/null
cmake --build "$BUILD" --target _cuda_emulator --parallel >"$BUILD/build.log" 2>&1 || { tail -n 40 "$BUILD/build.log"; exit 1; }
module=$(ls "$BUILD"/lib/_cuda_emulator*.so)

# The sanitizer runtime must come first in a Python process, with libstdc++ (so that ASan can intercept C++
# throws: the emulator's faults are exceptions); leaks are not what this checks. Reports also go to
# $BUILD/asan.* (pytest captures stderr).
libstdcxx=$(${CXX:-g++} -print-file-name=libstdc++.so.6)
rm -f "$BUILD"/asan.*
export LD_PRELOAD="$libasan $libstdcxx" ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:log_path=$BUILD/asan"
export REIDFAST_CUDA_EMULATOR_MODULE="$module" REIDFAST_EMULATE_CUDA=1
status=0
# MEMCHECK_WORKLOAD=exercise: every kernel once (scripts/exercise_cuda_kernels.py) without the emulated tests.
if [ "${MEMCHECK_WORKLOAD:-all}" = exercise ]; then
  "$PYTHON" scripts/exercise_cuda_kernels.py || status=$?
else
  "$PYTHON" scripts/exercise_cuda_kernels.py && "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda_emulator tests "$@" ||
    status=$?
fi
if ls "$BUILD"/asan.* >/dev/null 2>&1; then
  cat "$BUILD"/asan.*
  exit 1
fi
[ "$status" -eq 0 ] && echo "memcheck: no invalid memory access in the CUDA kernels ($module)"
exit "$status"
