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


def tuning_bucket(size: int) -> int:
    """The power of two >= size that autotuning keys on instead of the exact size: a new batch or gallery
    size reuses the configuration tuned for its bucket instead of benchmarking every config again."""
    return 1 << max(0, int(size) - 1).bit_length()
