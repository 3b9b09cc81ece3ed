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


def dot_path(input_dtype: torch.dtype, input_precision: str) -> str:
    """How tl.dot multiplies on the card: "fma" for float32 at IEEE precision (SIMT FMAs: large register
    tiles), else "mma" (tensor cores: TF32, float16, bfloat16). Their register needs differ, so do their
    spill-free autotuning configs."""
    return "fma" if input_dtype == torch.float32 and input_precision == "ieee" else "mma"


def prune_by_dot_path(configs_by_path: dict[str, list], input_name: str):
    """An autotune `early_config_prune` that keeps the configs of the call's dot path (configs_by_path holds
    the same Config objects the autotuner got): those measured for sm_90 without spills in
    tests/test_triton_compile.py. The autotuning key must include INPUT_PRECISION."""
    def prune(configs, named_args, **kwargs):
        keep = configs_by_path[dot_path(named_args[input_name].dtype, kwargs["INPUT_PRECISION"])]
        return [config for config in configs if any(config is kept for kept in keep)]
    return prune
