"""Pieces shared by the Triton kernels."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def correctly_rounded_sqrt(value, FP64: tl.constexpr):
    """Square root rounded to nearest (tl.sqrt is the fast approximate one on NVIDIA GPUs for float32)."""
    if FP64:
        return tl.sqrt(value)  # float64 has no approximate root
    else:
        return tl.sqrt_rn(value)
