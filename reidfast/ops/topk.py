"""Fused pairwise distance + row top-k, blockwise: O(N*k + block) memory, never the full N x M matrix."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import _native
from .._arrays import to_caller
from .._dispatch import Op, requested_backend, use_backend
from ..reference import distance as reference
from .distance import (_output_dtype, _pairwise_distance_op, _unit_inner_stride, convert_pair, cpu_gemm_kernel,
                       prepare_pair, row_block_size, same_rows)

# k beyond a fused kernel's limit: the kernel refuses the call, and a forced one hands it to "torch" (row
# chunks of the device's pairwise distance + a stable sort), whose distances still run on the forced backend.
# On the host the native kernel takes every k; without it, the reference.
TOPK_DISTANCE = Op("topk_distance", order={"cpu": ("cpu", "reference")}, fallback="torch")


def _triton_refuses(device, dtype, *, k: int) -> str | None:
    from ..kernels.triton.topk import MAX_K

    return None if k <= MAX_K else f"k={k} is above the Triton kernel's limit of {MAX_K}"


def _cuda_refuses(device, dtype, *, k: int) -> str | None:
    max_k = _native.cuda_kernels().cuda_topk_max_k
    return None if k <= max_k else f"k={k} is above the CUDA kernel's limit of {max_k}"


@TOPK_DISTANCE.register("reference")
def _topk_reference(x, y, k, metric, exclude_self):
    return reference.topk_distance(x, y, k, metric, exclude_self)


@TOPK_DISTANCE.register("cpu")
def _topk_cpu(x, y, k, metric, exclude_self):
    """The fused SIMD kernel (cpu_gemm_kernel: no block of products in memory), else BLAS GEMM on row blocks
    (torch.mm) with a native pass keeping each row's k best in a heap."""
    same_input = same_rows(x, y)
    kernel = cpu_gemm_kernel(x.dtype)
    if kernel is not None:
        x, y = convert_pair(x, y, _unit_inner_stride)
        values = torch.empty((x.shape[0], k), dtype=torch.float32)
        indices = torch.empty((x.shape[0], k), dtype=torch.int64)
        _native._C.fused_topk_distance_cpu(
            _native.view(x), _native.view(y), _native.METRIC_CODES[metric], same_input, exclude_self,
            _native.view(values), _native.view(indices), kernel,
        )
        return values, indices
    dtype = _output_dtype(x.dtype)
    x, y = convert_pair(x, y, lambda t: t.to(dtype))
    x_norms = (x * x).sum(1)
    y_norms = x_norms if y is x else (y * y).sum(1)
    values = torch.empty((x.shape[0], k), dtype=dtype)
    indices = torch.empty((x.shape[0], k), dtype=torch.int64)
    step = row_block_size(y.shape[0])
    gram = torch.empty((min(step, x.shape[0]), y.shape[0]), dtype=dtype)
    view = _native.view
    for start in range(0, x.shape[0], step):
        rows = slice(start, start + step)
        block = torch.mm(x[rows], y.T, out=gram[: x[rows].shape[0]])
        _native._C.topk_epilogue_cpu(
            view(block), view(x_norms[rows]), view(y_norms), _native.METRIC_CODES[metric],
            start if same_input else -1, exclude_self, view(values[rows]), view(indices[rows]),
        )
    return values, indices


@TOPK_DISTANCE.register("torch")
def _topk_torch(x, y, k, metric, exclude_self):
    """Row chunks of pairwise distances on x's device + a stable sort: for k beyond the fused kernels' limits.
    The distances come from the forced backend (the one whose kernel refused k), else the device's default."""
    forced = requested_backend()
    values, indices = [], []
    step = row_block_size(y.shape[0], target_elements=1 << 24)
    for start in range(0, x.shape[0], step):
        with use_backend(None if forced == "torch" else forced):  # "torch" has no distance kernel of its own
            block = _pairwise_distance_op(x[start:start + step], y, metric)
        if exclude_self:
            rows = torch.arange(block.shape[0], device=block.device)
            block[rows, rows + start] = float("inf")
        order = torch.sort(block, dim=1, stable=True).indices[:, :k]
        values.append(block.gather(1, order))
        indices.append(order)
    return torch.cat(values), torch.cat(indices)


@TOPK_DISTANCE.register("triton", refuses=_triton_refuses)
def _topk_triton(x, y, k, metric, exclude_self):
    from ..kernels.triton import topk as triton_topk

    return triton_topk.topk_distance(_unit_inner_stride(x), _unit_inner_stride(y), k, metric, exclude_self)


@TOPK_DISTANCE.register("cuda", refuses=_cuda_refuses)
def _topk_cuda(x, y, k, metric, exclude_self):
    kernels = _native.cuda_kernels()
    x, y = _unit_inner_stride(x), _unit_inner_stride(y)
    values = torch.empty((x.shape[0], k), dtype=_output_dtype(x.dtype), device=x.device)
    indices = torch.empty((x.shape[0], k), dtype=torch.int64, device=x.device)
    workspace = torch.empty(
        kernels.topk_distance_workspace_bytes(x.shape[0], y.shape[0], k), dtype=torch.uint8, device=x.device
    )
    view = _native.cuda_view
    kernels.topk_distance_cuda(
        view(x), view(y), k, _native.METRIC_CODES[metric], exclude_self, view(values), view(indices), view(workspace),
        _native.cuda_stream(x.device),
    )
    return values, indices


def topk_distance(
    x: Any, y: Any = None, k: int = 20, metric: str = "euclidean", *, exclude_self: bool = False,
    allow_nonfinite: bool = False,
) -> tuple[Any, Any]:
    """The k nearest rows of y (M, D) for every row of x (N, D) -> (values (N, k), indices (N, k)).

    Sorted ascending by distance; equal distances list the smaller index first (deterministic). Computed
    blockwise: memory O(N*k + block), never the full N x M matrix. y=None searches x itself, and then
    exclude_self=True skips each row's own column. Metrics and input types as `pairwise_distance`;
    values are float32 (float64 for float64 inputs), indices int64, in the caller's array type. The values
    are not differentiable (use pairwise_distance on the selected pairs for gradients).
    """
    if metric not in reference.METRICS:
        raise ValueError(f"metric: expected one of {reference.METRICS}, got {metric!r}")
    if exclude_self and y is not None:
        raise ValueError("exclude_self: expected y=None (x searched against itself), got a separate y")
    x_t, y_t, library = prepare_pair(x, y, allow_nonfinite)
    available = y_t.shape[0] - (1 if exclude_self else 0)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= available:
        raise ValueError(f"k: expected an integer in [1, {available}] (the number of candidates), got {k!r}")
    _, implementation = TOPK_DISTANCE.select(x_t.device, x_t.dtype, k=int(k))
    with torch.no_grad(), torch.autocast(x_t.device.type, enabled=False):
        values, indices = implementation(x_t, y_t, int(k), metric, exclude_self)
    return to_caller(values, library), to_caller(indices, library)
