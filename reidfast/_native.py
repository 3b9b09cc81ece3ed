"""Loads the native module reidfast._C and turns torch tensors into the views it takes.

The module links no libtorch: it receives raw pointers, dtype codes, shapes and strides (in elements).
"""
from __future__ import annotations

import functools
from typing import Any

import torch

try:  # a missing or broken build must not break `import reidfast`: the reference backend still works
    from . import _C  # type: ignore[attr-defined]

    LOAD_ERROR: str | None = None
except Exception as error:  # ImportError, or OSError from a broken shared library
    _C = None
    LOAD_ERROR = f"{type(error).__name__}: {error}"

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


def view(tensor: torch.Tensor) -> Any:
    """A borrowed _C.ArrayView of `tensor` (valid while the tensor is alive)."""
    device = tensor.device.index if tensor.device.type == "cuda" else -1
    if device is None:
        device = torch.cuda.current_device()
    return _C.ArrayView(tensor.data_ptr(), DTYPE_CODES[tensor.dtype], list(tensor.shape), list(tensor.stride()), device)
