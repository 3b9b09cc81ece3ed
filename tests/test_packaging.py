"""Packaging: the source package holds every build input and builds in a fresh venv; the native module links no
libtorch or CUDA runtime; the emulator is a test tool; optional dependencies fail with the extra to install;
GPU coverage is worked out from the compiled architectures."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import time
import venv
from pathlib import Path

import pytest

import reidfast
from reidfast import _native
from reidfast._optional import require

ROOT = Path(__file__).resolve().parents[1]
IN_SOURCE_TREE = (ROOT / "setup.py").exists() and (ROOT / ".git").exists() and shutil.which("git") is not None
needs_source_tree = pytest.mark.skipif(not IN_SOURCE_TREE, reason="needs the git source tree (not an installed copy)")

# What the source package must hold: the build inputs tracked in git (prefixes and single files).
BUILD_INPUT_PREFIXES = ("csrc/", "_build_backend/", "reidfast/")
BUILD_INPUT_FILES = {"CMakeLists.txt", "setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"}
GENERATED = {"PKG-INFO", "setup.cfg"}  # written by setuptools into every sdist


def _is_build_input(path: str) -> bool:
    return path in BUILD_INPUT_FILES or path.startswith(BUILD_INPUT_PREFIXES)


def _build_sdist(out: Path) -> Path:
    """The sdist, built by the project's own PEP 517 backend (what `python -m build --sdist` calls)."""
    code = "import sys; sys.path.insert(0, '_build_backend'); import backend; print(backend.build_sdist(sys.argv[1]))"
    result = subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out / result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    return _build_sdist(tmp_path_factory.mktemp("sdist"))


@needs_source_tree
def test_sdist_holds_exactly_the_build_inputs(sdist):
    with tarfile.open(sdist) as archive:
        names = [member.name.split("/", 1)[1] for member in archive.getmembers() if member.isfile()]
    packaged = {name for name in names if name not in GENERATED and not name.startswith("reidfast.egg-info/")}
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    expected = {path for path in tracked if _is_build_input(path) and (ROOT / path).is_file()}
    assert {"CMakeLists.txt", "setup.py", "LICENSE", "README.md", "_build_backend/backend.py"} <= packaged
    assert any(name.startswith("csrc/cuda/") for name in packaged)
    assert expected - packaged == set(), "build inputs missing from the sdist"
    assert packaged - expected == set(), "files in the sdist that are not tracked build inputs"
    assert not any(name.endswith(".so") for name in names)


def test_license_is_the_apache_2_text():
    if not IN_SOURCE_TREE:
        pytest.skip("the LICENSE file is part of the source tree")
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


@pytest.mark.slow
@needs_source_tree
def test_sdist_builds_and_runs_in_a_fresh_venv_without_torch(sdist, tmp_path):
    """pip install of the sdist (CPU kernels only, REIDFAST_CUDA=0, no torch) and a numpy-only check of _C."""
    if shutil.which("cmake") is None and os.environ.get("CI") != "true":
        pytest.skip("needs CMake (or the network, for the cmake package)")
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    env = {**os.environ, "REIDFAST_CUDA": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for name in ("REIDFAST_CUDA_EMULATOR", "REIDFAST_KERNELS_LIBRARY", "PYTHONPATH", "VIRTUAL_ENV"):
        env.pop(name, None)
    started = time.perf_counter()
    # --no-deps: no torch; the build requirements (setuptools, pybind11) come in pip's isolated build env.
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--progress-bar", "off", "numpy",
                              str(sdist)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    seconds = time.perf_counter() - started
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    check = subprocess.run([str(python), str(ROOT / "scripts" / "check_native_numpy.py")], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    assert check.stdout.strip().endswith("ok") and "emulator module: none" in check.stdout
    assert "'cuda': False" in check.stdout
    print(f"\nsdist install (CPU kernels, no torch) took {seconds:.0f}s")


def _needed_libraries(path: str) -> list[str]:
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
    return [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


@pytest.mark.skipif(shutil.which("readelf") is None or not sys.platform.startswith("linux"), reason="needs readelf")
@pytest.mark.skipif(not _native.available(), reason="native module not built")
def test_native_module_links_no_torch_and_no_cuda_runtime():
    """One _C serves every torch version, and a CUDA build needs only the driver (static CUDA runtime; libcuda is
    opened at run time by that runtime, never a link dependency)."""
    needed = _needed_libraries(_native._C.__file__)
    assert needed, "readelf found no dependencies at all"
    for forbidden in ("libtorch", "libc10", "libcudart", "libcuda."):
        assert not [lib for lib in needed if lib.startswith(forbidden)], f"_C needs {needed}"


def test_import_loads_no_emulator():
    code = "import sys, reidfast; print('reidfast._cuda_emulator' in sys.modules, reidfast._native.EMULATOR_LOAD_ERROR)"
    env = {k: v for k, v in os.environ.items() if k not in ("REIDFAST_EMULATE_CUDA", "REIDFAST_CUDA_EMULATOR_MODULE")}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("False") and "REIDFAST_EMULATE_CUDA is not set" in result.stdout


@needs_source_tree
def test_setup_builds_the_emulator_only_when_asked(monkeypatch):
    import ast

    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert cmake.split('option(REIDFAST_CUDA_EMULATOR "')[1].split(")")[0].endswith("OFF")
    tree = ast.parse((ROOT / "setup.py").read_text())
    helper = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "_emulator_enabled")
    namespace = {"os": os, "sys": sys}
    exec(compile(ast.Module(body=[helper], type_ignores=[]), "setup.py", "exec"), namespace)
    monkeypatch.delenv("REIDFAST_CUDA_EMULATOR", raising=False)
    assert not namespace["_emulator_enabled"]()
    monkeypatch.setenv("REIDFAST_CUDA_EMULATOR", "1")
    assert namespace["_emulator_enabled"]() == sys.platform.startswith("linux")


@pytest.mark.skipif(not _native.available(), reason="native module not built")
def test_kernels_follow_torchs_thread_count():
    import torch

    if not _native.build_info().get("openmp"):
        pytest.skip("built without OpenMP")
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            reidfast.pairwise_distance(torch.randn(8, 4), torch.randn(9, 4))
            assert _native._C.build_info()["openmp_max_threads"] == threads  # omp_get_max_threads() of this thread
    finally:
        torch.set_num_threads(before)


def test_missing_optional_dependency_names_the_extra():
    with pytest.raises(ImportError, match=r'pip install "reidfast\[all\]"') as error:
        require("sklearn_is_not_installed_here", "verification metrics")
    assert "verification metrics" in str(error.value)
    assert require("numpy", "anything").__name__ == "numpy"


# --- GPU coverage ---------------------------------------------------------------------------------------------------

WHEEL_BUILD = {"cuda": True, "cuda_compiler": "12.9.86", "cuda_runtime_version": 12090,
               "cuda_architectures": "75-real 80-real 86-real 89-real 90-real 100-real 120"}


def test_architecture_list_parsing():
    assert _native.parse_cuda_architectures("80;90") == ((80, 90), (80, 90))
    assert _native.parse_cuda_architectures("75-real 90-virtual") == ((75,), (90,))
    assert _native.parse_cuda_architectures("sm_86 compute_90") == ((86,), (90,))


@pytest.mark.parametrize("capability,driver,covered", [
    ((8, 0), 12090, "machine code"),   # A100
    ((8, 6), 12040, "machine code"),   # an RTX 3090 on a CUDA 12.4 driver: minor-version compatibility
    ((8, 7), 12090, "machine code"),   # sm_86 code runs on 8.7
    ((12, 0), 12090, "machine code"),
    ((12, 1), 12090, "machine code"),
    ((13, 0), 13000, "PTX JIT"),       # a future card: the newest PTX, JIT-compiled
    ((13, 0), 12040, None),            # ... but this driver is older than the compiler that wrote the PTX
    ((7, 0), 12090, None),             # V100: below the oldest SM
])
def test_cuda_coverage(capability, driver, covered):
    coverage = _native.cuda_coverage(WHEEL_BUILD, capability, driver)
    assert coverage.covered_by == covered and coverage.usable == (covered is not None)
    if covered is None:
        assert "not covered" in coverage.reason and "falling back" in coverage.reason


def test_cuda_coverage_with_a_too_old_driver():
    build = {**WHEEL_BUILD, "cuda_compiler": "13.0.88", "cuda_runtime_version": 13000}
    coverage = _native.cuda_coverage(build, (9, 0), 12080)
    assert not coverage.usable and "update the driver" in coverage.reason and "13.0" in coverage.reason


def test_cuda_coverage_without_a_device_or_kernels():
    assert not _native.cuda_coverage(WHEEL_BUILD, None, None).usable
    assert _native.cuda_coverage({"cuda": False}, (9, 0), 12090).reason == "built without CUDA kernels"


def test_cli_info_reports_gpu_coverage(capsys):
    from reidfast.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    if _native.has_cuda_kernels():
        assert "machine code: sm_" in out and "this GPU:" in out
