"""Loads the native module reidfast._C and turns torch tensors into the views it takes.

The module links no libtorch: it receives raw pointers, dtype codes, shapes and strides (in elements).
"""
from __future__ import annotations

import ctypes
import functools
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

import torch

try:  # a missing or broken build must not break `import reidfast`: the reference backend still works
    from . import _C  # type: ignore[attr-defined]

    LOAD_ERROR: str | None = None
except Exception as error:  # ImportError, or OSError from a broken shared library
    _C = None
    LOAD_ERROR = f"{type(error).__name__}: {error}"



def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


# REIDFAST_EMULATE_CUDA=1 (read once, here): the `cuda` backend runs the CUDA kernels on host tensors in the CPU
# emulator (reidfast._cuda_emulator: slow, for testing the kernels without a GPU, like TRITON_INTERPRET=1). The
# emulator is a test tool: built only with REIDFAST_CUDA_EMULATOR=1, never in a wheel, and not even imported
# unless this switch is on.
EMULATE_CUDA = _env_flag("REIDFAST_EMULATE_CUDA")


def _load_cuda_emulator() -> Any:
    """The CUDA kernels compiled for a CPU emulator (csrc/cuda_emulator), for tests without a GPU; another
    build of it (the AddressSanitizer one of scripts/memcheck_cuda_kernels.sh) from the path in
    REIDFAST_CUDA_EMULATOR_MODULE."""
    import importlib.util
    import sys

    path = os.environ.get("REIDFAST_CUDA_EMULATOR_MODULE")
    if not path:
        if importlib.util.find_spec(f"{__package__}._cuda_emulator") is None:
            raise ImportError(f"{__package__}._cuda_emulator is not installed (a test tool: never in wheels)")
        from . import _cuda_emulator  # type: ignore[attr-defined]

        return _cuda_emulator
    spec = importlib.util.spec_from_file_location(f"{__package__}._cuda_emulator", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"REIDFAST_CUDA_EMULATOR_MODULE={path!r} is not a loadable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[spec.name] = module
    return module


_cuda_emulator: Any = None
EMULATOR_LOAD_ERROR: str | None = "not loaded: REIDFAST_EMULATE_CUDA is not set"
if EMULATE_CUDA:
    try:
        _cuda_emulator = _load_cuda_emulator()
        EMULATOR_LOAD_ERROR = None
    except Exception as error:
        EMULATOR_LOAD_ERROR = f"{type(error).__name__}: {error}"

REBUILD_HINT = (
    "build it from source with a C++17 compiler and CMake >= 3.18: `pip install -e .` in a checkout, or "
    "`pip install --force-reinstall --no-deps --no-binary reidfast reidfast`"
)

# Keep in sync with csrc/common/array.h (enum class DType, enum class Metric).
DTYPE_CODES = {
    torch.float32: 0,
    torch.float64: 1,
    torch.float16: 2,
    torch.bfloat16: 3,
    torch.int32: 4,
    torch.int64: 5,
    torch.bool: 6,
    torch.uint8: 7,
}
METRIC_CODES = {"euclidean": 0, "sqeuclidean": 1, "cosine": 2}


def available() -> bool:
    return _C is not None


def has_cuda_kernels() -> bool:
    return bool(_build_info().get("cuda"))


@functools.lru_cache(maxsize=None)
def _build_info() -> dict[str, Any]:
    return dict(_C.build_info()) if _C is not None else {}


def build_info() -> dict[str, Any]:
    """How the native module was built (compiler, OpenMP, CUDA versions and architectures); {} if missing."""
    return dict(_build_info())


def _array_view(module: Any, tensor: torch.Tensor, device: int) -> Any:
    """module.ArrayView of `tensor` on `device` (-1: host) that keeps the tensor alive: a view of a temporary
    such as view(labels.to(torch.int64)) stays valid while a kernel call holds it."""
    array = module.ArrayView(tensor.data_ptr(), DTYPE_CODES[tensor.dtype], list(tensor.shape), list(tensor.stride()),
                             device)
    array.owner = tensor
    return array


_thread_state = threading.local()


def follow_torch_threads() -> None:
    """Give the kernels' OpenMP runtime torch's thread count (torch.get_num_threads()) for the calling thread.

    A wheel bundles its own libgomp beside torch's OpenMP runtime: each would otherwise start a thread per core,
    and a training loop that calls both would oversubscribe the cores. Costs a cached comparison per call."""
    threads = torch.get_num_threads()
    if getattr(_thread_state, "threads", None) != threads:
        setter = getattr(_C, "set_num_threads", None)  # None in a module built before it existed
        if setter is not None:
            setter(threads)
        _thread_state.threads = threads


def view(tensor: torch.Tensor) -> Any:
    """A _C.ArrayView of `tensor` (see _array_view). Host views also sync the kernels' thread count with torch's."""
    if tensor.device.type == "cuda":
        device = tensor.device.index
        if device is None:
            device = torch.cuda.current_device()
    else:
        device = -1
        follow_torch_threads()
    return _array_view(_C, tensor, device)


def emulating_cuda() -> bool:
    """REIDFAST_EMULATE_CUDA=1 at import (EMULATE_CUDA): the `cuda` backend runs on the CPU emulator."""
    return EMULATE_CUDA


def cuda_kernels() -> Any:
    """The module whose *_cuda functions run the CUDA kernels: _C, or _cuda_emulator when emulating."""
    return _cuda_emulator if emulating_cuda() else _C


def cuda_view(tensor: torch.Tensor) -> Any:
    """view() for cuda_kernels(): when emulating, a host tensor passes as device 0 of the emulator."""
    if not emulating_cuda():
        return view(tensor)
    if tensor.device.type != "cpu":
        raise ValueError(f"REIDFAST_EMULATE_CUDA=1 runs the CUDA kernels on host tensors, got one on {tensor.device}")
    return _array_view(_cuda_emulator, tensor, 0)


def cuda_stream(device: torch.device) -> int:
    """The current CUDA stream of `device` as an integer for the kernels (0 when emulating)."""
    return 0 if emulating_cuda() else torch.cuda.current_stream(device).cuda_stream


# --- which GPUs the compiled CUDA kernels cover -----------------------------------------------------------------

def parse_cuda_architectures(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(machine-code SMs, PTX versions) of a CMAKE_CUDA_ARCHITECTURES list such as "75-real 80-real 90"
    ("90": both, "90-real": machine code only, "90-virtual": PTX only; "sm_90"/"compute_90" also accepted)."""
    sass: set[int] = set()
    ptx: set[int] = set()
    for token in re.split(r"[\s;,]+", text.strip()):
        match = re.fullmatch(r"(sm_|compute_)?(\d+)[a-z]?(-real|-virtual)?", token)
        if not match:
            continue
        prefix, number, kind = match.group(1), int(match.group(2)), match.group(3)
        if prefix != "compute_" and kind != "-virtual":
            sass.add(number)
        if prefix == "compute_" or (kind != "-real" and prefix != "sm_"):
            ptx.add(number)
    return tuple(sorted(sass)), tuple(sorted(ptx))


def _version_number(text: str) -> int:
    """"12.9.86" -> 12090 (the CUDA_VERSION / cudaDriverGetVersion encoding)."""
    parts = [int(p) for p in re.findall(r"\d+", text)[:2]] + [0, 0]
    return parts[0] * 1000 + parts[1] * 10


def format_cuda_version(version: int) -> str:
    return f"{version // 1000}.{version % 1000 // 10}"


@dataclass(frozen=True)
class CudaCoverage:
    """Whether this build's CUDA kernels run on a device: by machine code, by JIT-compiling their PTX, or not."""
    machine_code: tuple[int, ...]  # SMs compiled to machine code, e.g. (75, 80, 86, 89, 90)
    ptx: tuple[int, ...]  # PTX versions embedded (the driver JIT-compiles them for newer cards)
    device_capability: tuple[int, int] | None
    driver_version: int | None  # cudaDriverGetVersion encoding: 12040 is CUDA 12.4
    runtime_version: int | None  # the CUDA runtime linked into _C
    covered_by: str | None  # "machine code", "PTX JIT" or None
    usable: bool
    reason: str


def cuda_coverage(build: dict[str, Any], device_capability: tuple[int, int] | None,
                  driver_version: int | None) -> CudaCoverage:
    """Coverage of a device of `device_capability` under a driver of `driver_version` by the kernels of `build`
    (build_info()). Machine code for sm_XY runs on X.Y and on later minor versions X.Z; PTX for XY is
    JIT-compiled for any card of capability >= X.Y by a driver at least as new as the compiler that wrote it."""
    sass, ptx = parse_cuda_architectures(str(build.get("cuda_architectures", "")))
    runtime = build.get("cuda_runtime_version")
    compiler = _version_number(str(build["cuda_compiler"])) if build.get("cuda_compiler") else None
    facts = dict(machine_code=sass, ptx=ptx, device_capability=device_capability, driver_version=driver_version,
                 runtime_version=runtime)
    if not build.get("cuda"):
        return CudaCoverage(**facts, covered_by=None, usable=False, reason="built without CUDA kernels")
    if device_capability is None or driver_version is None:
        return CudaCoverage(**facts, covered_by=None, usable=False, reason="no CUDA device or driver found")
    major, minor = device_capability
    sm = major * 10 + minor
    card = f"compute capability {major}.{minor}"
    built = f"sm {', '.join(map(str, sass)) or '-'}; PTX {', '.join(map(str, ptx)) or '-'}"
    if runtime and driver_version // 1000 < runtime // 1000:
        return CudaCoverage(**facts, covered_by=None, usable=False, reason=(
            f"the CUDA driver supports CUDA {format_cuda_version(driver_version)}, but the kernels were built with "
            f"the CUDA {format_cuda_version(runtime)} runtime: update the driver (CUDA "
            f"{format_cuda_version(runtime // 1000 * 1000)} or newer) or use a wheel built with that CUDA major; "
            f"falling back to triton/torch"))
    if any(s // 10 == major and s % 10 <= minor for s in sass):
        return CudaCoverage(**facts, covered_by="machine code", usable=True, reason=f"{card}: machine code ({built})")
    jittable = [p for p in ptx if p <= sm]
    if jittable and (compiler is None or driver_version >= compiler):
        return CudaCoverage(**facts, covered_by="PTX JIT", usable=True,
                            reason=f"{card}: PTX {max(jittable)} JIT-compiled by the driver ({built})")
    if jittable:
        why = (f"its PTX needs a driver for CUDA {format_cuda_version(compiler)} or newer to JIT-compile, this one "
               f"supports CUDA {format_cuda_version(driver_version)}")
    else:
        why = f"no machine code or PTX for it ({built})"
    return CudaCoverage(**facts, covered_by=None, usable=False, reason=(
        f"{card} is not covered by the CUDA kernels: {why}; falling back to triton/torch (rebuild with "
        f"CMAKE_CUDA_ARCHITECTURES={sm} to cover it)"))


def cuda_driver_version() -> int | None:
    """The installed driver's CUDA version (12040 is 12.4) from libcuda, or None without a driver."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    return version.value if libcuda.cuDriverGetVersion(ctypes.byref(version)) == 0 else None


def cuda_device_coverage(device: int | None = None) -> CudaCoverage:
    """cuda_coverage() of this build for a CUDA device (default: the current one) and the installed driver."""
    capability = None
    if torch.cuda.is_available():
        capability = tuple(torch.cuda.get_device_capability(torch.cuda.current_device() if device is None else device))
    return cuda_coverage(build_info(), capability, cuda_driver_version())
