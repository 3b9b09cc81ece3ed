"""Triton pairwise distance: one (BLOCK_N, BLOCK_M) output tile per program, norms and epilogue fused.

Forward math, per tile:  acc = sum_k x[i, k] y[j, k],  nx_i = sum_k x[i, k]^2,  ny_j = sum_k y[j, k]^2
    euclidean   sqrt(max(nx + ny - 2 acc, 1e-12))
    sqeuclidean max(nx + ny - 2 acc, 0)
    cosine      1 - acc / (max(sqrt(nx), 1e-12) max(sqrt(ny), 1e-12))
Accumulation in float32 (float64 for float64 inputs). float32 products follow
torch.backends.cuda.matmul.allow_tf32, like torch.mm.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._native import METRIC_CODES
from .common import correctly_rounded_sqrt, same_rows

_EUCLIDEAN, _SQEUCLIDEAN, _COSINE = METRIC_CODES["euclidean"], METRIC_CODES["sqeuclidean"], METRIC_CODES["cosine"]


@triton.jit
def _pairwise_distance_kernel(
    x_ptr, y_ptr, out_ptr, n, m, dim, x_row_stride, y_row_stride,
    METRIC: tl.constexpr, SAME_INPUT: tl.constexpr, FP64: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n
    col_ok = cols < m
    # int64 offsets: row * stride and row * m pass 2**31 on large inputs (a 46,341 x 46,341 output).
    x_offsets = rows.to(tl.int64) * x_row_stride
    y_offsets = cols.to(tl.int64) * y_row_stride
    acc_type = tl.float64 if FP64 else tl.float32
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=acc_type)
    x_norm = tl.zeros((BLOCK_N,), dtype=acc_type)
    y_norm = tl.zeros((BLOCK_M,), dtype=acc_type)
    for start in range(0, dim, BLOCK_D):
        feats = start + tl.arange(0, BLOCK_D)
        feat_ok = feats < dim
        x_tile = tl.load(x_ptr + x_offsets[:, None] + feats[None, :],
                         mask=row_ok[:, None] & feat_ok[None, :], other=0.0)
        y_tile = tl.load(y_ptr + y_offsets[:, None] + feats[None, :],
                         mask=col_ok[:, None] & feat_ok[None, :], other=0.0)
        x_wide = x_tile.to(acc_type)
        y_wide = y_tile.to(acc_type)
        x_norm += tl.sum(x_wide * x_wide, axis=1)
        y_norm += tl.sum(y_wide * y_wide, axis=1)
        if FP64:
            acc += tl.sum(x_wide[:, None, :] * y_wide[None, :, :], axis=2)
        elif UPCAST_DOT:
            acc = tl.dot(x_wide, tl.trans(y_wide), acc, input_precision="ieee")
        else:
            acc = tl.dot(x_tile, tl.trans(y_tile), acc, input_precision=INPUT_PRECISION)
    if METRIC == 2:  # cosine
        x_len = tl.maximum(correctly_rounded_sqrt(x_norm, FP64), 1e-12)
        y_len = tl.maximum(correctly_rounded_sqrt(y_norm, FP64), 1e-12)
        dist = 1.0 - acc / (x_len[:, None] * y_len[None, :])
    else:
        squared = x_norm[:, None] + y_norm[None, :] - 2.0 * acc
        if SAME_INPUT:  # tl.dot and tl.sum round differently: make a row's distance to itself exact
            squared = tl.where(rows[:, None] == cols[None, :], squared * 0.0, squared)  # NaN stays NaN
        if METRIC == 1:  # sqeuclidean
            dist = tl.maximum(squared, 0.0)
        else:
            dist = correctly_rounded_sqrt(tl.maximum(squared, 1e-12), FP64)
    out_offsets = rows.to(tl.int64)[:, None] * m + cols[None, :]
    tl.store(out_ptr + out_offsets, dist.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def pairwise_distance(x: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    """x (N, D), y (M, D) of one floating dtype, unit inner stride -> (N, M) float32 (float64 for float64)."""
    fp64 = x.dtype == torch.float64
    out = torch.empty((x.shape[0], y.shape[0]), dtype=torch.float64 if fp64 else torch.float32, device=x.device)
    if out.numel() == 0:
        return out
    if fp64:
        block_n, block_m, block_d = 16, 16, 16
    else:
        block_n, block_m, block_d = 64, 64, 32
    precision = "tf32" if (x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32) else "ieee"
    # The interpreter (TRITON_INTERPRET=1) multiplies bfloat16 tiles wrongly; the products of bfloat16 values
    # are exact in float32, so upcasting first gives the same result.
    upcast_dot = x.dtype == torch.bfloat16 and not x.is_cuda
    same_input = same_rows(x, y)
    grid = (triton.cdiv(x.shape[0], block_n), triton.cdiv(y.shape[0], block_m))
    _pairwise_distance_kernel[grid](
        x, y, out, x.shape[0], y.shape[0], x.shape[1], x.stride(0), y.stride(0),
        METRIC=METRIC_CODES[metric], SAME_INPUT=same_input, FP64=fp64, INPUT_PRECISION=precision, UPCAST_DOT=upcast_dot,
        BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_D=block_d,
    )
    return out
