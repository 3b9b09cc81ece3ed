"""The array boundary: torch, numpy and cupy in; results out as the caller's type, on the caller's device.

Inputs are converted once, without copies where the memory allows it (numpy via torch.from_numpy, cupy and
other DLPack / __cuda_array_interface__ producers via torch.from_dlpack / torch.as_tensor). Other array
producers are accepted and answered with torch tensors; Python sequences become numpy arrays.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

TORCH, NUMPY, CUPY = "torch", "numpy", "cupy"
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # the feature dtypes every kernel takes


def _numpy_to_tensor(array: np.ndarray, name: str) -> torch.Tensor:
    if array.dtype.kind in "fiub":
        if not array.dtype.isnative or any(s < 0 or s % array.itemsize for s in array.strides):
            array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
        with warnings.catch_warnings():  # read-only arrays: we never write to inputs
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(array)
    raise ValueError(f"{name}: unsupported numpy dtype {array.dtype}; expected a numeric array")


def as_tensor(array: Any, name: str) -> tuple[torch.Tensor, str]:
    """(tensor sharing memory with `array` where possible, the caller's array library)."""
    if isinstance(array, torch.Tensor):
        return array, TORCH
    if isinstance(array, np.ndarray):
        return _numpy_to_tensor(array, name), NUMPY
    module = type(array).__module__.split(".")[0]
    if module == "cupy":
        return torch.from_dlpack(array), CUPY
    if hasattr(array, "__dlpack__"):
        return torch.from_dlpack(array), TORCH
    if hasattr(array, "__cuda_array_interface__"):
        return torch.as_tensor(array, device="cuda"), TORCH
    if isinstance(array, (list, tuple)) or np.isscalar(array) or hasattr(array, "__array__"):
        return _numpy_to_tensor(np.asarray(array), name), NUMPY
    raise ValueError(
        f"{name}: expected a torch tensor, numpy array or cupy array, got {type(array).__module__}.{type(array).__name__}"
    )


def to_caller(tensor: torch.Tensor, library: str) -> Any:
    """Return `tensor` as `library`'s array type (numpy results live on the host, cupy on the GPU)."""
    if library == NUMPY:
        return tensor.detach().cpu().numpy()
    if library == CUPY:
        import cupy

        return cupy.from_dlpack(tensor.detach())
    return tensor


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    """The one device all given tensors live on; ValueError naming the odd one out otherwise."""
    named = [(name, t) for name, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, tensor in named[1:]:
        if tensor.device != first.device:
            raise ValueError(
                f"{name}: expected the same device as {first_name} ({first.device}), got {tensor.device}; "
                "move both to one device"
            )
    return first.device


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """ValueError if `tensor` holds NaN or Inf (synchronises on CUDA; skipped while torch.compile traces)."""
    if torch.compiler.is_compiling():
        return
    if has_nonfinite(tensor):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name}: expected finite values, got {bad} NaN/Inf value(s); clean the features or "
                         "pass allow_nonfinite=True where the op has it")


def has_nonfinite(tensor: torch.Tensor) -> bool:
    """Whether a floating tensor holds NaN or Inf. One sum (NaN and Inf propagate through it) instead of a
    boolean tensor; only when the sum is not finite does an exact elementwise check run."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return False
    # A finite sum proves there is no NaN/Inf; an overflowing sum of finite values only costs the exact check.
    return not bool(torch.isfinite(tensor.sum())) and not bool(torch.isfinite(tensor).all())


def check_features(features: Any, name: str, *, allow_nonfinite: bool = True, allow_empty: bool = False,
                   unit_inner_stride: bool = False) -> None:
    """The one check of a (rows, D) feature matrix, for the public ops and the kernel launchers alike: a 2-D
    tensor with a dtype in FLOAT_DTYPES; at least one row and one feature unless allow_empty; unit inner
    stride if asked (the kernels read rows with any stride but features contiguously); finite unless
    allow_nonfinite. ValueError "name: expected ..., got ..." otherwise."""
    if not isinstance(features, torch.Tensor):
        raise ValueError(f"{name}: expected a torch tensor, got {type(features).__module__}.{type(features).__name__}")
    if features.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D (num_rows, num_features) array, got shape {tuple(features.shape)}")
    if features.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name}: expected a floating dtype (float32, float16, bfloat16, float64), got {features.dtype}")
    if not allow_empty and (features.shape[0] == 0 or features.shape[1] == 0):
        raise ValueError(f"{name}: expected at least one row and one feature, got shape {tuple(features.shape)}")
    if unit_inner_stride and features.shape[1] > 1 and features.stride(1) != 1:
        raise ValueError(f"{name}: expected unit inner stride (contiguous features), got strides {features.stride()}")
    if not allow_nonfinite:
        check_finite(features, name)


def same_rows(x: torch.Tensor, y: torch.Tensor) -> bool:
    """The one "same input" rule: row i of x is row i of y in memory (same address, dtype, feature count,
    row and feature strides; the row counts may differ, e.g. anchors that are the first rows of the
    candidates). Kernels then make a row's distance to itself exact (0 before the metric's clamp) instead of
    the rounding residue of |x|^2 + |y|^2 - 2 x.y."""
    if x.data_ptr() != y.data_ptr() or x.dtype != y.dtype or x.shape[1:] != y.shape[1:]:
        return False
    same_row_stride = min(x.shape[0], y.shape[0]) <= 1 or x.stride(0) == y.stride(0)
    return same_row_stride and (x.shape[1] <= 1 or x.stride(1) == y.stride(1))
