"""Triton batch-hard mining for the fused triplet loss: hardest positive and negative per anchor, no B x C matrix.

For anchor i (row of anchors (B, D)) and candidate j (row of candidates (C, D)):
    acc = sum_k a[i, k] c[j, k],  na_i = sum_k a[i, k]^2,  nc_j = sum_k c[j, k]^2
    euclidean   d = sqrt(max(na + nc - 2 acc, 1e-12))
    sqeuclidean d = max(na + nc - 2 acc, 0)
    cosine      d = 1 - acc / (max(sqrt(na), 1e-12) max(sqrt(nc), 1e-12))
accumulated in float32 (float64 for float64 inputs; float32 products follow
torch.backends.cuda.matmul.allow_tf32), exactly as reidfast/reference/distance.py defines them.

    hardest positive p(i) = argmax_j d(i, j) over j with candidate_labels[j] == anchor_labels[i], j != anchor_index[i]
    hardest negative n(i) = argmin_j d(i, j) over j with candidate_labels[j] != anchor_labels[i]
Ties go to the smallest j; an anchor without positives (negatives) gets index -1 and distance 0.

Kernel design: each program owns BLOCK_B anchors and sweeps all candidates in BLOCK_C tiles in increasing j
(D in BLOCK_D chunks, tl.dot for the products, candidate norms fused). Each tile folds into a running
(best value, best index) per anchor: the tile's extreme value, the smallest column holding it, and a
replacement only when strictly better, so earlier (smaller) indices keep ties. Euclidean distances are mined
on the distance itself: two squared distances that round to the same float32 distance tie, as in the reference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from ..._native import METRIC_CODES
from .common import check_features, correctly_rounded_sqrt, prune_by_dot_path, same_rows, tuning_bucket



@triton.jit
def _batch_hard_mine_kernel(
    anchors_ptr, candidates_ptr, anchor_labels_ptr, candidate_labels_ptr, anchor_index_ptr,
    dist_ap_ptr, dist_an_ptr, positive_index_ptr, negative_index_ptr,
    num_anchors, num_candidates, dim, anchor_row_stride, candidate_row_stride,
    tune_anchors, tune_candidates, tune_dim,  # unused by the kernel: the autotuning key (common.tuning_bucket)
    METRIC: tl.constexpr, SAME_INPUT: tl.constexpr, FP64: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
):
    acc_type = tl.float64 if FP64 else tl.float32
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < num_anchors
    # int64 offsets: row * stride can pass 2**31 on large galleries.
    anchor_offsets = rows.to(tl.int64) * anchor_row_stride
    labels = tl.load(anchor_labels_ptr + rows, mask=row_ok, other=0)
    own_column = tl.load(anchor_index_ptr + rows, mask=row_ok, other=-1)

    anchor_norm = tl.zeros((BLOCK_B,), dtype=acc_type)
    for start in range(0, dim, BLOCK_D):
        feats = start + tl.arange(0, BLOCK_D)
        anchor_tile = tl.load(anchors_ptr + anchor_offsets[:, None] + feats[None, :],
                              mask=row_ok[:, None] & (feats < dim)[None, :], other=0.0).to(acc_type)
        anchor_norm += tl.sum(anchor_tile * anchor_tile, axis=1)
    anchor_length = tl.maximum(correctly_rounded_sqrt(anchor_norm, FP64), 1e-12)

    # Running winners; an index of -1 means "none yet" (values are only read where the index is >= 0).
    best_positive = tl.full((BLOCK_B,), float("-inf"), dtype=acc_type)
    best_negative = tl.full((BLOCK_B,), float("inf"), dtype=acc_type)
    best_positive_index = tl.full((BLOCK_B,), -1, dtype=tl.int64)
    best_negative_index = tl.full((BLOCK_B,), -1, dtype=tl.int64)

    for column_start in range(0, num_candidates, BLOCK_C):
        cols = column_start + tl.arange(0, BLOCK_C)
        col_ok = cols < num_candidates
        candidate_offsets = cols.to(tl.int64) * candidate_row_stride
        acc = tl.zeros((BLOCK_B, BLOCK_C), dtype=acc_type)
        candidate_norm = tl.zeros((BLOCK_C,), dtype=acc_type)
        for start in range(0, dim, BLOCK_D):
            feats = start + tl.arange(0, BLOCK_D)
            feat_ok = feats < dim
            anchor_tile = tl.load(anchors_ptr + anchor_offsets[:, None] + feats[None, :],
                                  mask=row_ok[:, None] & feat_ok[None, :], other=0.0)
            candidate_tile = tl.load(candidates_ptr + candidate_offsets[:, None] + feats[None, :],
                                     mask=col_ok[:, None] & feat_ok[None, :], other=0.0)
            candidate_wide = candidate_tile.to(acc_type)
            candidate_norm += tl.sum(candidate_wide * candidate_wide, axis=1)
            if FP64:
                acc += tl.sum(anchor_tile.to(acc_type)[:, None, :] * candidate_wide[None, :, :], axis=2)
            elif UPCAST_DOT:
                acc = tl.dot(anchor_tile.to(acc_type), tl.trans(candidate_wide), acc, input_precision="ieee")
            else:
                acc = tl.dot(anchor_tile, tl.trans(candidate_tile), acc, input_precision=INPUT_PRECISION)

        # score: the distance itself, so equal float32 distances tie exactly as the reference's do.
        if METRIC == 2:  # cosine
            candidate_length = tl.maximum(correctly_rounded_sqrt(candidate_norm, FP64), 1e-12)
            score = 1.0 - acc / (anchor_length[:, None] * candidate_length[None, :])
        else:
            squared = anchor_norm[:, None] + candidate_norm[None, :] - 2.0 * acc
            if SAME_INPUT:  # tl.dot and tl.sum round differently: make a row's distance to itself exact
                squared = tl.where(rows[:, None] == cols[None, :], 0.0, squared)
            if METRIC == 1:  # sqeuclidean
                score = tl.maximum(squared, 0.0)
            else:
                score = correctly_rounded_sqrt(tl.maximum(squared, 1e-12), FP64)

        candidate_labels = tl.load(candidate_labels_ptr + cols, mask=col_ok, other=0)
        same_label = labels[:, None] == candidate_labels[None, :]
        is_positive = same_label & (cols[None, :] != own_column[:, None]) & col_ok[None, :]
        is_negative = (~same_label) & col_ok[None, :]
        wide_cols = cols.to(tl.int64)[None, :]
        no_column = num_candidates  # sentinel larger than every real column

        tile_max = tl.max(tl.where(is_positive, score, float("-inf")), axis=1)
        tile_max_index = tl.min(tl.where(is_positive & (score == tile_max[:, None]), wide_cols, no_column), axis=1)
        found = tile_max_index < no_column
        better = found & ((tile_max > best_positive) | (best_positive_index < 0))
        best_positive = tl.where(better, tile_max, best_positive)
        best_positive_index = tl.where(better, tile_max_index, best_positive_index)

        tile_min = tl.min(tl.where(is_negative, score, float("inf")), axis=1)
        tile_min_index = tl.min(tl.where(is_negative & (score == tile_min[:, None]), wide_cols, no_column), axis=1)
        found = tile_min_index < no_column
        better = found & ((tile_min < best_negative) | (best_negative_index < 0))
        best_negative = tl.where(better, tile_min, best_negative)
        best_negative_index = tl.where(better, tile_min_index, best_negative_index)

    dist_ap = tl.where(best_positive_index >= 0, best_positive, 0.0)
    dist_an = tl.where(best_negative_index >= 0, best_negative, 0.0)
    tl.store(dist_ap_ptr + rows, dist_ap.to(dist_ap_ptr.dtype.element_ty), mask=row_ok)
    tl.store(dist_an_ptr + rows, dist_an.to(dist_an_ptr.dtype.element_ty), mask=row_ok)
    tl.store(positive_index_ptr + rows, best_positive_index, mask=row_ok)
    tl.store(negative_index_ptr + rows, best_negative_index, mask=row_ok)


# Under TRITON_INTERPRET=1 triton.jit returns an interpreter object: autotuning there is slow and pointless.
_COMPILED = isinstance(_batch_hard_mine_kernel, JITFunction)
_INTERPRETER_BLOCKS = dict(BLOCK_B=16, BLOCK_C=16, BLOCK_D=16)
# float64 has no tensor-core dot: a (BLOCK_B, BLOCK_C, BLOCK_D) broadcast product must stay small.
_FP64_BLOCKS = dict(BLOCK_B=16, BLOCK_C=16, BLOCK_D=16, num_warps=4)

def _config(block_b: int, block_c: int, block_d: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_B": block_b, "BLOCK_C": block_c, "BLOCK_D": block_d}, num_warps=warps,
                         num_stages=stages)


# Autotuning configs per dot path (common.dot_path), each compiled for sm_90 without spills or local memory
# (tests/test_triton_compile.py; benchmarks/RESULTS.md "Triton kernel resources"). Dropped for spilling
# (B, C, D; warps, stages): (64, 128, 32; 4, 3), (128, 128, 32; 8, 3) and (64, 64, 64; 4, 2) on both paths;
# (32, 64, 32; 4, 3), (64, 64, 32; 4, 3), (128, 64, 32; 8, 3) and (64, 128, 32; 8, 3) on the FMA path, whose
# float32 products need 8 warps for the same tiles.
_MINE_MMA_CONFIGS = [_config(32, 64, 32, 4, 3), _config(64, 64, 32, 4, 3), _config(128, 64, 32, 8, 3),
                     _config(64, 128, 32, 8, 3)]
_MINE_FMA_CONFIGS = [_config(32, 64, 32, 8, 3), _config(64, 64, 32, 8, 3)]
MINE_CONFIGS_BY_PATH = {"mma": _MINE_MMA_CONFIGS, "fma": _MINE_FMA_CONFIGS}

# Built everywhere (its key is checked in tests), launched only when compiled.
_batch_hard_mine_tuned = triton.autotune(
    configs=_MINE_MMA_CONFIGS + _MINE_FMA_CONFIGS,
    # the autotuner adds the argument dtypes itself; INPUT_PRECISION picks the dot path's configs
    key=["tune_anchors", "tune_candidates", "tune_dim", "INPUT_PRECISION"],
    prune_configs_by={"early_config_prune": prune_by_dot_path(MINE_CONFIGS_BY_PATH, "anchors_ptr")},
)(_batch_hard_mine_kernel)


def _check_index_vector(name: str, values: torch.Tensor, length: int, device: torch.device) -> None:
    wrong = values.dtype != torch.int64 or values.shape != (length,) or values.device != device
    if wrong or not values.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous int64 ({length},) tensor on {device}, "
                         f"got {tuple(values.shape)} {values.dtype} on {values.device}")


def batch_hard_mine(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    anchor_labels: torch.Tensor,
    candidate_labels: torch.Tensor,
    anchor_index: torch.Tensor,
    metric: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hardest positive and negative of every anchor among the candidates, without a B x C matrix.

    anchors (B, D), candidates (C, D): one floating dtype, unit inner stride, any row stride, one device.
    anchor_labels (B,), candidate_labels (C,), anchor_index (B,): contiguous int64; anchor_index[i] is anchor
    i's own column in the candidates (excluded from its positives), -1 for none.
    Returns (dist_ap (B,), dist_an (B,), positive_index (B,), negative_index (B,)): distances float32
    (float64 for float64 inputs), 0 where there is none; indices int64, -1 where there is none.
    """
    if metric not in METRIC_CODES:
        raise ValueError(f"metric: expected one of {tuple(METRIC_CODES)}, got {metric!r}")
    check_features("anchors", anchors)
    check_features("candidates", candidates)
    mismatch = candidates.dtype != anchors.dtype or candidates.device != anchors.device
    if mismatch or candidates.shape[1] != anchors.shape[1]:
        raise ValueError(f"candidates {tuple(candidates.shape)} {candidates.dtype} on {candidates.device} do not match "
                         f"anchors {tuple(anchors.shape)} {anchors.dtype} on {anchors.device}")
    num_anchors, dim = anchors.shape
    num_candidates = candidates.shape[0]
    _check_index_vector("anchor_labels", anchor_labels, num_anchors, anchors.device)
    _check_index_vector("candidate_labels", candidate_labels, num_candidates, anchors.device)
    _check_index_vector("anchor_index", anchor_index, num_anchors, anchors.device)

    fp64 = anchors.dtype == torch.float64
    dist_dtype = torch.float64 if fp64 else torch.float32
    dist_ap = torch.empty(num_anchors, dtype=dist_dtype, device=anchors.device)
    dist_an = torch.empty_like(dist_ap)
    positive_index = torch.empty(num_anchors, dtype=torch.int64, device=anchors.device)
    negative_index = torch.empty_like(positive_index)
    if num_anchors == 0:
        return dist_ap, dist_an, positive_index, negative_index

    precision = "tf32" if (anchors.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32) else "ieee"
    # The interpreter multiplies bfloat16 tiles wrongly; products of bfloat16 values are exact in float32.
    upcast_dot = anchors.dtype == torch.bfloat16 and not anchors.is_cuda
    same_input = same_rows(anchors, candidates)
    arguments = (
        anchors, candidates, anchor_labels, candidate_labels, anchor_index,
        dist_ap, dist_an, positive_index, negative_index,
        num_anchors, num_candidates, dim, anchors.stride(0), candidates.stride(0),
        tuning_bucket(num_anchors), tuning_bucket(num_candidates), tuning_bucket(dim),
    )
    flags = dict(METRIC=METRIC_CODES[metric], SAME_INPUT=same_input, FP64=fp64, INPUT_PRECISION=precision,
                 UPCAST_DOT=upcast_dot)
    if not _COMPILED or fp64:
        blocks = _INTERPRETER_BLOCKS if not _COMPILED else _FP64_BLOCKS
        grid = (triton.cdiv(num_anchors, blocks["BLOCK_B"]),)
        _batch_hard_mine_kernel[grid](*arguments, **flags, **blocks)
    else:
        grid = lambda meta: (triton.cdiv(num_anchors, meta["BLOCK_B"]),)  # noqa: E731
        _batch_hard_mine_tuned[grid](*arguments, **flags)
    return dist_ap, dist_an, positive_index, negative_index
