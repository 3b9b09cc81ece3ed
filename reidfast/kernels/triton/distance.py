"""Triton pairwise distance: one (BLOCK_N, BLOCK_M) output tile per program, norms and epilogue fused.

Forward math, per tile:  acc = sum_k x[i, k] y[j, k],  nx_i = sum_k x[i, k]^2,  ny_j = sum_k y[j, k]^2
    euclidean   sqrt(max(nx + ny - 2 acc, 1e-12))
    sqeuclidean max(nx + ny - 2 acc, 0)
    cosine      1 - acc / (max(sqrt(nx), 1e-12) max(sqrt(ny), 1e-12))
Accumulation in float32 (float64 for float64 inputs). float32 products follow
torch.backends.cuda.matmul.allow_tf32, like torch.mm.

The tile helpers (dot_and_norms, distance_from_dot, distance_tile) are shared by the fused kernels (top-k in
topk.py, rank counting in rank_count.py). An entry's float operations are meant to depend only on BLOCK_D and
the launch options (TileOptions), not on the entry's place in the tile, so that a kernel launched with the
same TileOptions sees bitwise the distances of pairwise_distance: tested under the interpreter
(tests/test_evaluate_features_triton.py); on a card it rests on the same code, tile and warps compiling to
the same per-entry instructions (not yet checked on one).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from ..._native import METRIC_CODES
from .common import correctly_rounded_sqrt, same_rows

_EUCLIDEAN, _SQEUCLIDEAN, _COSINE = METRIC_CODES["euclidean"], METRIC_CODES["sqeuclidean"], METRIC_CODES["cosine"]
# Under TRITON_INTERPRET=1 tl.dot is numpy's matmul (BLAS), whose float result for an entry depends on its
# column's place in the tile (OpenBLAS rounds edge columns differently: equal columns give unequal entries).
# There the product is a broadcast sum over each BLOCK_D chunk instead, the same operations for every entry,
# as tl.dot's are on a card; so the fused kernels and pairwise_distance agree bitwise in the tests too.
_INTERPRETED = tl.constexpr(not isinstance(correctly_rounded_sqrt, JITFunction))


@triton.jit
def dot_and_norms(
    x_ptr, y_ptr, x_offsets, y_offsets, row_ok, col_ok, dim,
    FP64: tl.constexpr, INPUT_PRECISION: tl.constexpr, WITH_X_NORM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """acc (BLOCK_N, BLOCK_M) = x . y over D in BLOCK_D chunks, y's squared norms (BLOCK_M,) and, when
    WITH_X_NORM, x's (BLOCK_N,) (else zeros: the caller has them). x_offsets/y_offsets: int64 row offsets."""
    acc_type = tl.float64 if FP64 else tl.float32
    acc = tl.zeros((x_offsets.shape[0], y_offsets.shape[0]), dtype=acc_type)
    x_norm = tl.zeros((x_offsets.shape[0],), dtype=acc_type)
    y_norm = tl.zeros((y_offsets.shape[0],), dtype=acc_type)
    for start in range(0, dim, BLOCK_D):
        feats = start + tl.arange(0, BLOCK_D)
        feat_ok = feats < dim
        x_tile = tl.load(x_ptr + x_offsets[:, None] + feats[None, :],
                         mask=row_ok[:, None] & feat_ok[None, :], other=0.0)
        y_tile = tl.load(y_ptr + y_offsets[:, None] + feats[None, :],
                         mask=col_ok[:, None] & feat_ok[None, :], other=0.0)
        x_wide = x_tile.to(acc_type)
        y_wide = y_tile.to(acc_type)
        if WITH_X_NORM:
            x_norm += tl.sum(x_wide * x_wide, axis=1)
        y_norm += tl.sum(y_wide * y_wide, axis=1)
        if FP64 or _INTERPRETED:
            acc += tl.sum(x_wide[:, None, :] * y_wide[None, :, :], axis=2)
        else:
            acc = tl.dot(x_tile, tl.trans(y_tile), acc, input_precision=INPUT_PRECISION)
    return acc, x_norm, y_norm


@triton.jit
def squared_norms(x_ptr, x_offsets, row_ok, dim, FP64: tl.constexpr, BLOCK_D: tl.constexpr):
    """x's squared norms (BLOCK_N,), summed in the BLOCK_D chunks of dot_and_norms (the same floats)."""
    acc_type = tl.float64 if FP64 else tl.float32
    x_norm = tl.zeros((x_offsets.shape[0],), dtype=acc_type)
    for start in range(0, dim, BLOCK_D):
        feats = start + tl.arange(0, BLOCK_D)
        x_tile = tl.load(x_ptr + x_offsets[:, None] + feats[None, :],
                         mask=row_ok[:, None] & (feats < dim)[None, :], other=0.0).to(acc_type)
        x_norm += tl.sum(x_tile * x_tile, axis=1)
    return x_norm


@triton.jit
def distance_from_dot(acc, x_norm, y_norm, rows, cols, METRIC: tl.constexpr, SAME_INPUT: tl.constexpr,
                      FP64: tl.constexpr):
    """The (BLOCK_N, BLOCK_M) distances of rows x cols from their dot products and squared norms."""
    if METRIC == 2:  # cosine
        x_len = tl.maximum(correctly_rounded_sqrt(x_norm, FP64), 1e-12)
        y_len = tl.maximum(correctly_rounded_sqrt(y_norm, FP64), 1e-12)
        dist = 1.0 - acc / (x_len[:, None] * y_len[None, :])
    else:
        squared = x_norm[:, None] + y_norm[None, :] - 2.0 * acc
        if SAME_INPUT:  # tl.dot and tl.sum round differently: make a row's distance to itself exact
            squared = tl.where(rows[:, None] == cols[None, :], squared * 0.0, squared)  # NaN stays NaN
        # NaN (inf - inf from overflowing features) stays NaN, as in torch.clamp_min: the ops reject it
        if METRIC == 1:  # sqeuclidean
            dist = tl.maximum(squared, 0.0, propagate_nan=tl.PropagateNan.ALL)
        else:
            dist = correctly_rounded_sqrt(tl.maximum(squared, 1e-12, propagate_nan=tl.PropagateNan.ALL), FP64)
    return dist


@triton.jit
def distance_tile(
    x_ptr, y_ptr, rows, cols, n, m, dim, x_row_stride, y_row_stride,
    METRIC: tl.constexpr, SAME_INPUT: tl.constexpr, FP64: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """The (BLOCK_N, BLOCK_M) distances of x rows `rows` to y rows `cols` (masked rows/columns: garbage)."""
    # int64 offsets: row * stride passes 2**31 on large inputs.
    x_offsets = rows.to(tl.int64) * x_row_stride
    y_offsets = cols.to(tl.int64) * y_row_stride
    acc, x_norm, y_norm = dot_and_norms(x_ptr, y_ptr, x_offsets, y_offsets, rows < n, cols < m, dim,
                                        FP64, INPUT_PRECISION, True, BLOCK_D)
    return distance_from_dot(acc, x_norm, y_norm, rows, cols, METRIC, SAME_INPUT, FP64)


@triton.jit
def _pairwise_distance_kernel(
    x_ptr, y_ptr, out_ptr, n, m, dim, x_row_stride, y_row_stride,
    METRIC: tl.constexpr, SAME_INPUT: tl.constexpr, FP64: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    dist = distance_tile(x_ptr, y_ptr, rows, cols, n, m, dim, x_row_stride, y_row_stride,
                         METRIC, SAME_INPUT, FP64, INPUT_PRECISION, BLOCK_D)
    # int64: row * m passes 2**31 on a 46,341 x 46,341 output
    out_offsets = rows.to(tl.int64)[:, None] * m + cols[None, :]
    tl.store(out_ptr + out_offsets, dist.to(out_ptr.dtype.element_ty), mask=(rows < n)[:, None] & (cols < m)[None, :])


@dataclass(frozen=True)
class TileOptions:
    """How pairwise_distance launches its tiles for inputs of one dtype: a kernel built on distance_tile and
    launched with these gets the same floats per entry."""

    fp64: bool
    input_precision: str  # tl.dot's: "tf32" for float32 under allow_tf32, else "ieee"
    block_n: int
    block_m: int
    block_d: int
    # Triton's defaults, written out: the layouts (and so the reduction order of the norms) follow the warps
    num_warps: int = 4
    num_stages: int = 3

    @property
    def out_dtype(self) -> torch.dtype:
        return torch.float64 if self.fp64 else torch.float32

    def constants(self) -> dict:
        """The kernel's constexpr arguments and launch options."""
        return dict(FP64=self.fp64, INPUT_PRECISION=self.input_precision,
                    BLOCK_N=self.block_n, BLOCK_M=self.block_m, BLOCK_D=self.block_d, num_warps=self.num_warps,
                    num_stages=self.num_stages)


def tile_options(x: torch.Tensor) -> TileOptions:
    """pairwise_distance's launch options for inputs like x (dtype, device, allow_tf32 read now)."""
    fp64 = x.dtype == torch.float64
    precision = "tf32" if (x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32) else "ieee"
    blocks = (16, 16, 16) if fp64 else (64, 64, 32)
    return TileOptions(fp64, precision, *blocks)


def pairwise_distance(x: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    """x (N, D), y (M, D) of one floating dtype, unit inner stride -> (N, M) float32 (float64 for float64)."""
    options = tile_options(x)
    out = torch.empty((x.shape[0], y.shape[0]), dtype=options.out_dtype, device=x.device)
    if out.numel() == 0:
        return out
    grid = (triton.cdiv(x.shape[0], options.block_n), triton.cdiv(y.shape[0], options.block_m))
    _pairwise_distance_kernel[grid](
        x, y, out, x.shape[0], y.shape[0], x.shape[1], x.stride(0), y.stride(0),
        METRIC=METRIC_CODES[metric], SAME_INPUT=same_rows(x, y), **options.constants(),
    )
    return out
