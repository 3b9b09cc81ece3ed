"""Pieces shared by the Triton kernels."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ... import _arrays
from ..._arrays import same_rows  # noqa: F401  (the one "same input" rule, for the launchers)


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
    """A launcher's (rows, D) input: reidfast._arrays.check_features with the kernels' contract (any number of
    rows, unit inner stride, any row stride; non-finite values are the op layer's business)."""
    _arrays.check_features(features, name, allow_empty=True, unit_inner_stride=True)
