"""Pairwise distance: argument checks, array conversion, backend dispatch and autograd."""
from __future__ import annotations

import functools
import os
from typing import Any

import torch

from .. import _native
from .._arrays import as_tensor, check_features, check_same_device, same_rows, to_caller
from .._dispatch import BackendUnavailableError, Op
from ..reference import distance as reference

PAIRWISE_DISTANCE = Op("pairwise_distance")

# The CPU backend's matrix product: a fused SIMD micro-kernel (csrc/cpu/gemm_kernels.h) or BLAS + epilogue.
CPU_GEMM_ENV = "REIDFAST_CPU_GEMM"
CPU_GEMM_CHOICES = ("auto", "avx512", "avx2", "blas")
_GEMM_KERNEL_CODES = {"avx2": 1, "avx512": 2}  # csrc/cpu/gemm_kernels.h: GemmKernel


def _output_dtype(dtype: torch.dtype) -> torch.dtype:
    return reference.accumulation_dtype(dtype)


def _unit_inner_stride(t: torch.Tensor) -> torch.Tensor:
    """The kernels read rows with any stride but features contiguously."""
    return t if t.shape[1] <= 1 or t.stride(1) == 1 else t.contiguous()


@functools.lru_cache(maxsize=None)
def fused_cpu_kernels() -> tuple[str, ...]:
    """The fused SIMD micro-kernels the native module has and this CPU runs, widest first ("avx512", "avx2")."""
    module = _native._C
    return tuple(module.cpu_gemm_kernels()) if module is not None and hasattr(module, "cpu_gemm_kernels") else ()


def cpu_gemm_kernel(dtype: torch.dtype) -> int | None:
    """The fused micro-kernel the CPU backend runs for inputs of `dtype`, or None for the BLAS path.

    Set by REIDFAST_CPU_GEMM: "auto" (default: the widest fused kernel this CPU runs, BLAS where there is
    none), "avx512", "avx2" or "blas" (torch.mm on row blocks + the native epilogue). float64 always takes
    the BLAS path: the micro-kernels compute in float32. Measured on a 2-core Zen 5, the AVX-512 kernel was
    1.7-3x faster than the BLAS path at every size from 300 x 300 x 2048 to 16384 x 16384 x 256 (AVX2:
    1.1-1.7x) and no slower at 64 x 64 x 128, so "auto" never picks BLAS when it has a choice.
    """
    requested = os.environ.get(CPU_GEMM_ENV, "auto").strip().lower() or "auto"
    if requested not in CPU_GEMM_CHOICES:
        raise ValueError(f"{CPU_GEMM_ENV}: expected one of {', '.join(CPU_GEMM_CHOICES)}, got {requested!r}")
    if requested == "blas" or dtype == torch.float64:
        return None
    available = fused_cpu_kernels()
    if requested == "auto":
        return _GEMM_KERNEL_CODES[available[0]] if available else None
    if requested not in available:
        have = ", ".join(available) or "none"
        raise BackendUnavailableError(
            f"{CPU_GEMM_ENV}={requested}: this machine cannot run that micro-kernel (fused kernels here: {have}); "
            f"unset {CPU_GEMM_ENV} or set it to auto or blas"
        )
    return _GEMM_KERNEL_CODES[requested]


@PAIRWISE_DISTANCE.register("reference")
def _pairwise_distance_reference(x: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    return reference.pairwise_distance(x, y, metric)


def row_block_size(num_cols: int, target_elements: int = 1 << 23) -> int:
    """Rows per block of dot products: at least 256 rows so the GEMM per block stays efficient, and at most
    32 MiB of float32 per block (measured on 2 cores: smaller blocks made the skinny GEMMs 20-40% slower)."""
    return max(256, target_elements // max(num_cols, 1))


def convert_pair(x: torch.Tensor, y: torch.Tensor, convert) -> tuple[torch.Tensor, torch.Tensor]:
    """(convert(x), convert(y)), converting once when y is x itself."""
    x_converted = convert(x)
    return x_converted, x_converted if y is x else convert(y)


@PAIRWISE_DISTANCE.register("cpu")
def _pairwise_distance_cpu(x: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    """The fused SIMD kernel (cpu_gemm_kernel), else BLAS GEMM on row blocks (torch.mm) with the native
    epilogue turning each block into distances in place."""
    same_input = same_rows(x, y)
    kernel = cpu_gemm_kernel(x.dtype)
    if kernel is not None:
        x, y = convert_pair(x, y, _unit_inner_stride)
        out = torch.empty((x.shape[0], y.shape[0]), dtype=torch.float32)
        _native._C.fused_pairwise_distance_cpu(
            _native.view(x), _native.view(y), _native.METRIC_CODES[metric], same_input, _native.view(out), kernel
        )
        return out
    dtype = _output_dtype(x.dtype)
    x, y = convert_pair(x, y, lambda t: t.to(dtype))
    x_norms = (x * x).sum(1)
    y_norms = x_norms if y is x else (y * y).sum(1)
    out = torch.empty((x.shape[0], y.shape[0]), dtype=dtype)
    step = row_block_size(y.shape[0])
    for start in range(0, x.shape[0], step):
        rows = slice(start, start + step)
        block = torch.mm(x[rows], y.T, out=out[rows])
        _native._C.distance_epilogue_cpu(_native.view(block), _native.view(x_norms[rows]), _native.view(y_norms),
                                         _native.METRIC_CODES[metric], start if same_input else -1)
    return out


@PAIRWISE_DISTANCE.register("cuda")
def _pairwise_distance_cuda(x: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    x, y = _unit_inner_stride(x), _unit_inner_stride(y)
    out = torch.empty((x.shape[0], y.shape[0]), dtype=_output_dtype(x.dtype), device=x.device)
    view = _native.cuda_view
    _native.cuda_kernels().pairwise_distance_cuda(
        view(x), view(y), view(out), _native.METRIC_CODES[metric], _native.cuda_stream(x.device)
    )
    return out


@PAIRWISE_DISTANCE.register("triton")
def _pairwise_distance_triton(x: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    from ..kernels.triton import distance as triton_distance

    return triton_distance.pairwise_distance(_unit_inner_stride(x), _unit_inner_stride(y), metric)


@torch.library.custom_op("reidfast::pairwise_distance", mutates_args=())
def _pairwise_distance_op(x: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    _, implementation = PAIRWISE_DISTANCE.select(x.device, x.dtype)
    with torch.autocast(x.device.type, enabled=False):  # AMP policy: accumulate in float32, see README
        return implementation(x, y, metric)


@_pairwise_distance_op.register_fake
def _(x: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    return x.new_empty((x.shape[0], y.shape[0]), dtype=_output_dtype(x.dtype))


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    x, y, metric = inputs
    ctx.save_for_backward(x, y, output)
    ctx.metric = metric


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
    """Closed-form gradients (two GEMMs), in the output's precision, cast back to the input dtype."""
    x_in, y_in, out = ctx.saved_tensors
    x, y, grad = x_in.to(out.dtype), y_in.to(out.dtype), grad.to(out.dtype)
    if ctx.metric == "cosine":
        x_len = x.norm(dim=1, keepdim=True)
        y_len = y.norm(dim=1, keepdim=True)
        x_hat = x / x_len.clamp_min(reference.COSINE_EPS)
        y_hat = y / y_len.clamp_min(reference.COSINE_EPS)
        grad_x = _normalize_backward(-(grad @ y_hat), x_hat, x_len)
        grad_y = _normalize_backward(-(grad.T @ x_hat), y_hat, y_len)
    else:
        if ctx.metric == "euclidean":
            clamped = torch.tensor(reference.EUCLIDEAN_CLAMP, dtype=out.dtype).sqrt()
            grad = torch.where(out > clamped, grad / (2.0 * out), torch.zeros_like(grad))
        # d/dx of |x|^2 + |y|^2 - 2 x.y
        grad_x = 2.0 * (grad.sum(1, keepdim=True) * x - grad @ y)
        grad_y = 2.0 * (grad.sum(0)[:, None] * y - grad.T @ x)
    return grad_x.to(x_in.dtype), grad_y.to(y_in.dtype), None


def _normalize_backward(grad_hat: torch.Tensor, x_hat: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Gradient through x_hat = x / max(|x|, eps)."""
    eps = reference.COSINE_EPS
    projected = (grad_hat - x_hat * (x_hat * grad_hat).sum(1, keepdim=True)) / length.clamp_min(eps)
    return torch.where(length > eps, projected, grad_hat / eps)


_pairwise_distance_op.register_autograd(_backward, setup_context=_setup_context)


def prepare_pair(x: Any, y: Any, allow_nonfinite: bool) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Convert and validate a (queries, candidates) pair; y=None means x. Returns (x, y, caller library)."""
    x_t, library = as_tensor(x, "x")
    check_features(x_t, "x", allow_nonfinite=allow_nonfinite)
    if y is None:
        return x_t, x_t, library
    y_t, _ = as_tensor(y, "y")
    check_features(y_t, "y", allow_nonfinite=allow_nonfinite)
    check_same_device(x=x_t, y=y_t)
    if x_t.shape[1] != y_t.shape[1]:
        raise ValueError(f"y: expected {x_t.shape[1]} features per row to match x, got shape {tuple(y_t.shape)}")
    if x_t.dtype != y_t.dtype:
        common = torch.promote_types(x_t.dtype, y_t.dtype)
        x_t, y_t = x_t.to(common), y_t.to(common)
    return x_t, y_t, library


def pairwise_distance(x: Any, y: Any = None, metric: str = "euclidean", *, allow_nonfinite: bool = False) -> Any:
    """Distances between the rows of x (N, D) and y (M, D) -> (N, M); y=None scores x against itself.

    metric: "euclidean" sqrt(max(|x|^2+|y|^2-2x.y, 1e-12)), "sqeuclidean", or "cosine" 1 - x_hat.y_hat
    (a zero vector is at distance 1 from everything). Inputs: torch (CPU/CUDA), numpy or cupy arrays of
    float32/float16/bfloat16/float64, returned as the caller's type; values are float32 (float64 for float64
    inputs), accumulated in float32. Differentiable for torch inputs. NaN/Inf features raise ValueError
    unless allow_nonfinite=True.
    """
    if metric not in reference.METRICS:
        raise ValueError(f"metric: expected one of {reference.METRICS}, got {metric!r}")
    x_t, y_t, library = prepare_pair(x, y, allow_nonfinite)
    return to_caller(_pairwise_distance_op(x_t, y_t, metric), library)
