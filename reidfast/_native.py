"""Loads the native module reidfast._C and turns torch tensors into the views it takes.

The module links no libtorch: it receives raw pointers, dtype codes, shapes and strides (in elements).
"""
from __future__ import annotations

import functools
import os
from typing import Any

import torch

try:  # a missing or broken build must not break `import reidfast`: the reference backend still works
    from . import _C  # type: ignore[attr-defined]

    LOAD_ERROR: str | None = None
except Exception as error:  # ImportError, or OSError from a broken shared library
    _C = None
    LOAD_ERROR = f"{type(error).__name__}: {error}"



def _load_cuda_emulator() -> Any:
    """The CUDA kernels compiled for a CPU emulator (csrc/cuda_emulator), for tests without a GPU; another
    build of it (the AddressSanitizer one of scripts/memcheck_cuda_kernels.sh) from the path in
    REIDFAST_CUDA_EMULATOR_MODULE."""
    path = os.environ.get("REIDFAST_CUDA_EMULATOR_MODULE")
    if not path:
        from . import _cuda_emulator  # type: ignore[attr-defined]

        return _cuda_emulator
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"{__package__}._cuda_emulator", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"REIDFAST_CUDA_EMULATOR_MODULE={path!r} is not a loadable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[spec.name] = module
    return module


try:
    _cuda_emulator = _load_cuda_emulator()
    EMULATOR_LOAD_ERROR: str | None = None
except Exception as error:
    _cuda_emulator = None
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


def view(tensor: torch.Tensor) -> Any:
    """A _C.ArrayView of `tensor` (see _array_view)."""
    device = tensor.device.index if tensor.device.type == "cuda" else -1
    if device is None:
        device = torch.cuda.current_device()
    return _array_view(_C, tensor, device)


def emulating_cuda() -> bool:
    """REIDFAST_EMULATE_CUDA=1: the `cuda` backend runs the CUDA kernels on host tensors in the CPU emulator
    (reidfast._cuda_emulator; slow, for testing the kernels without a GPU, like TRITON_INTERPRET=1)."""
    return os.environ.get("REIDFAST_EMULATE_CUDA", "0").strip().lower() in ("1", "true", "yes", "on")


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
