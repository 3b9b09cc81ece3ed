"""Builds reidfast._C with CMake (the pybind/cmake_example CMakeExtension + CMakeBuild pattern).

Environment:
    REIDFAST_CUDA=auto|0|1        build the CUDA kernels when nvcc is found (auto), never (0), or always (1)
    CMAKE_CUDA_ARCHITECTURES      e.g. "80;90" (the default: Ampere and Hopper) or "90"
    CMAKE_BUILD_PARALLEL_LEVEL    parallel compile jobs (default: all cores)
    CMAKE_ARGS                    extra arguments for the CMake configure step
    REIDFAST_CUDA_EMULATOR=1      also build reidfast._cuda_emulator (the CUDA kernels on a CPU emulator: a test
                                  tool, off by default, never in wheels; .ci/run turns it on)
    REIDFAST_KERNELS_LIBRARY      a prebuilt libreidfast_kernels.a to link instead of compiling the kernels
                                  (scripts/build_wheels.sh: the kernels once, the pybind11 glue per Python)
    REIDFAST_DEBUG=1              a Debug build
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()
_MAIN_MODULE = "reidfast._C"
_CUDA_MODES = {"auto": "AUTO", "1": "ON", "on": "ON", "true": "ON", "0": "OFF", "off": "OFF", "false": "OFF"}


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: Path = ROOT) -> None:
        super().__init__(name, sources=[])
        self.source_dir = str(source_dir)


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        if ext.name != _MAIN_MODULE:  # a second module of the same CMake project: the first build made it
            built = Path(self.get_ext_fullpath(ext.name))
            if not built.exists():
                raise RuntimeError(f"the CMake build did not produce {built}")
            return
        cmake = shutil.which("cmake")
        if cmake is None:
            raise RuntimeError("building reidfast needs CMake >= 3.18: `pip install cmake` or your system package")
        cuda_mode = os.environ.get("REIDFAST_CUDA", "auto").strip().lower()
        if cuda_mode not in _CUDA_MODES:
            raise RuntimeError(f"REIDFAST_CUDA must be one of auto, 0, 1; got {cuda_mode!r}")

        import pybind11  # a build requirement (pyproject.toml)

        ext_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_type = "Debug" if self.debug or os.environ.get("REIDFAST_DEBUG") == "1" else "Release"
        configure = [
            cmake,
            ext.source_dir,
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={ext_dir}",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DREIDFAST_CUDA={_CUDA_MODES[cuda_mode]}",
        ]
        configure.append(f"-DREIDFAST_CUDA_EMULATOR={'ON' if _emulator_enabled() else 'OFF'}")
        if os.environ.get("REIDFAST_KERNELS_LIBRARY"):
            configure.append(f"-DREIDFAST_KERNELS_LIBRARY={os.environ['REIDFAST_KERNELS_LIBRARY']}")
        if os.environ.get("CMAKE_CUDA_ARCHITECTURES"):
            configure.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['CMAKE_CUDA_ARCHITECTURES']}")
        if not os.environ.get("CMAKE_GENERATOR") and shutil.which("ninja"):
            configure += ["-G", "Ninja"]
        configure += shlex.split(os.environ.get("CMAKE_ARGS", ""))

        build = [cmake, "--build", ".", "--config", build_type]
        if "CMAKE_BUILD_PARALLEL_LEVEL" not in os.environ:
            build += ["--parallel", str(os.cpu_count() or 1)]

        build_dir = Path(self.build_temp) / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(configure, cwd=build_dir, check=True)
        subprocess.run(build, cwd=build_dir, check=True)


def _emulator_enabled() -> bool:
    """Build reidfast._cuda_emulator: only when asked (REIDFAST_CUDA_EMULATOR=1), and only on Linux (ucontext /
    x86-64 stack switch). CMake's option REIDFAST_CUDA_EMULATOR has the same default (OFF)."""
    requested = os.environ.get("REIDFAST_CUDA_EMULATOR", "0").strip().lower() in ("1", "on", "true")
    return requested and sys.platform.startswith("linux")


def _extensions() -> list[CMakeExtension]:
    """reidfast._C, then reidfast._cuda_emulator (the same CMake project builds both)."""
    modules = [CMakeExtension(_MAIN_MODULE)]
    if _emulator_enabled():
        modules.append(CMakeExtension("reidfast._cuda_emulator"))
    return modules


setup(ext_modules=_extensions(), cmdclass={"build_ext": CMakeBuild})
