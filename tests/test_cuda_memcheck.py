"""A memcheck of the CUDA kernels on the CPU: scripts/memcheck_cuda_kernels.sh builds the emulator with
AddressSanitizer and runs every kernel on it (scripts/exercise_cuda_kernels.py: every kernel, dtype and metric on
small shapes); any out-of-bounds access to a tensor, shared memory or a thread's arrays fails the run with the
kernel's source line. The suite runs the emulated CUDA tests without ASan; `bash scripts/memcheck_cuda_kernels.sh`
by hand runs them under ASan too (about two minutes more)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _libasan() -> str | None:
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        return None
    path = subprocess.run([compiler, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.slow
@pytest.mark.cuda_emulator
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a card, compute-sanitizer is the memcheck")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the emulator is built on Linux only")
@pytest.mark.skipif(shutil.which("cmake") is None or _libasan() is None, reason="needs CMake and g++ with libasan")
def test_cuda_kernels_are_memory_clean_under_addresssanitizer(tmp_path):
    pytest.importorskip("pybind11", reason="the [test] extra installs pybind11 to rebuild the emulator")
    environment = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "REIDFAST_CUDA_EMULATOR_MODULE")}
    environment.update(PYTHON=sys.executable, REIDFAST_ASAN_BUILD=str(tmp_path / "build"), MEMCHECK_WORKLOAD="exercise")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "memcheck_cuda_kernels.sh")],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=1200,
    )
    output = result.stdout[-6000:] + result.stderr[-6000:]
    assert result.returncode == 0, output
    assert "memcheck: no invalid memory access" in result.stdout, output
