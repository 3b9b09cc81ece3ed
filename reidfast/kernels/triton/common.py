"""Pieces shared by the Triton kernels."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@triton.jit
def correctly_rounded_sqrt(value, FP64: tl.constexpr):
    """Square root rounded to nearest (tl.sqrt is the fast approximate one on NVIDIA GPUs for float32)."""
    if FP64:
        return tl.sqrt(value)  # float64 has no approximate root
    else:
        return tl.sqrt_rn(value)


def tuning_bucket(size: int) -> int:
    """The power of two >= size that autotuning keys on instead of the exact size: a new batch or gallery
    size reuses the configuration tuned for its bucket instead of benchmarking every config again."""
    return 1 << max(0, int(size) - 1).bit_length()


def check_features(name: str, features: torch.Tensor) -> None:
    """A kernel's (rows, D) input: 2-D, a dtype in FLOAT_DTYPES, unit inner stride (any row stride)."""
    if features.dim() != 2 or features.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be 2-D with a dtype in {FLOAT_DTYPES}, "
                         f"got {tuple(features.shape)} {features.dtype}")
    if features.shape[1] > 1 and features.stride(1) != 1:
        raise ValueError(f"{name} must have unit inner stride, got strides {features.stride()}")
