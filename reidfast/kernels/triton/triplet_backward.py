"""Triton backward of batch-hard mining: gradients of the two mined distances per anchor, O(B*D), deterministic.

For anchor i (row a_i of anchors (B, D)) with hardest positive p = p(i) and hardest negative n = n(i) (rows of
the candidates (C, D); -1: none) and incoming gradients g_p = grad_ap[i], g_n = grad_an[i] (0 where the index
is -1), the op returns the gradients of  sum_i g_p d(a_i, c_p) + g_n d(a_i, c_n)  with respect to the anchors
and the candidates (with candidates=None the candidates are the anchors: one gradient holds both parts).

    euclidean    d(a, c) = |a - c| (forward: sqrt(max(s, 1e-12))):  dd/da = (a - c) / d, 0 where d <= sqrt(1e-12)
    sqeuclidean  d(a, c) = |a - c|^2:                               dd/da = 2 (a - c)
    so with w = g / d (or 2 g):   grad a_i += w (a_i - c),   grad c -= w (a_i - c)   (w = 0 without a pair)
    cosine       d(a, c) = 1 - a^ . c^,  x^ = x / r_x,  r_x = max(|x|, 1e-12):
                 dd/da = -(c^ - a^ (a^ . c^)) / |a|  if |a| > 1e-12,  else -c^ / 1e-12   (the clamp passes no
                 gradient to |a|), i.e.  g dd/da = [g cos / r_a^2 if |a| > 1e-12 else 0] a - g / (r_a r_c) c,
                 and symmetrically for c.
Accumulation in float32 (float64 for float64 inputs); the gradients come back in the input dtype, rounded once.

Kernels
    _pair_coefficients_kernel  one pass over the anchor rows: the scalar coefficients of every pair above
        (cosine: the norms and dot products it needs, one sweep of a_i, c_p, c_n) into an O(B) buffer, and,
        when the candidates are a separate tensor, grad a_i itself.
    _chosen_rows_kernel  one program per output row j: the contributions of the anchors that chose j as their
        hardest positive or negative, read from an inverse index (CSR, built by the caller with a stable sort:
        entries e in [0, 2B), e < B the positive of anchor e, else the negative of anchor e - B, sorted by
        row), summed in that fixed order; with candidates=None also row j's own anchor part. No atomics, so
        two calls give bitwise equal results.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from ..._native import METRIC_CODES
from .common import check_features, correctly_rounded_sqrt

# Layout of the coefficient buffer (7 B values): anchor part [0, B) on a_i, [B, 2B) on c_p(i), [2B, 3B) on
# c_n(i); then per entry e in [0, 2B): [3B, 5B) on the anchor row, [5B, 7B) on the chosen row (cosine only).
_COEFFICIENT_ROWS = 7


@triton.jit
def _load_pair_features(anchors_ptr, candidates_ptr, anchor_offsets, positive_offsets, negative_offsets, row_ok,
                        has_positive, has_negative, start, dim, FP64: tl.constexpr, BLOCK_D: tl.constexpr):
    """Features [start, start + BLOCK_D) of each anchor row and of its hardest positive and negative rows, in
    the accumulation type; zeros where a row or pair is missing or past dim -> (a, p, n) (BLOCK_B, BLOCK_D)."""
    acc_type = tl.float64 if FP64 else tl.float32
    feats = start + tl.arange(0, BLOCK_D)
    feat_ok = (feats < dim)[None, :]
    a = tl.load(anchors_ptr + anchor_offsets[:, None] + feats[None, :],
                mask=row_ok[:, None] & feat_ok, other=0.0).to(acc_type)
    p = tl.load(candidates_ptr + positive_offsets[:, None] + feats[None, :],
                mask=has_positive[:, None] & feat_ok, other=0.0).to(acc_type)
    n = tl.load(candidates_ptr + negative_offsets[:, None] + feats[None, :],
                mask=has_negative[:, None] & feat_ok, other=0.0).to(acc_type)
    return a, p, n


@triton.jit
def _pair_coefficients_kernel(
    anchors_ptr, candidates_ptr, positive_ptr, negative_ptr, dist_ap_ptr, dist_an_ptr, grad_ap_ptr, grad_an_ptr,
    coefficients_ptr, grad_anchors_ptr,
    num_anchors, dim, anchor_row_stride, candidate_row_stride, grad_row_stride,
    METRIC: tl.constexpr, FP64: tl.constexpr, WRITE_ANCHOR_GRAD: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    acc_type = tl.float64 if FP64 else tl.float32
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < num_anchors
    positive = tl.load(positive_ptr + rows, mask=row_ok, other=-1)
    negative = tl.load(negative_ptr + rows, mask=row_ok, other=-1)
    has_positive = positive >= 0
    has_negative = negative >= 0
    grad_p = tl.where(has_positive, tl.load(grad_ap_ptr + rows, mask=row_ok, other=0.0).to(acc_type), 0.0)
    grad_n = tl.where(has_negative, tl.load(grad_an_ptr + rows, mask=row_ok, other=0.0).to(acc_type), 0.0)
    # int64 offsets: row * stride can pass 2**31 on large galleries, and so can the 7 B coefficient slots.
    anchor_offsets = rows.to(tl.int64) * anchor_row_stride
    plane = tl.cast(num_anchors, tl.int64)
    positive_offsets = tl.maximum(positive, 0) * candidate_row_stride
    negative_offsets = tl.maximum(negative, 0) * candidate_row_stride

    if METRIC == 2:  # cosine: norms and dot products of the two pairs, one sweep over the features
        anchor_sq = tl.zeros((BLOCK_B,), dtype=acc_type)
        positive_sq = tl.zeros((BLOCK_B,), dtype=acc_type)
        negative_sq = tl.zeros((BLOCK_B,), dtype=acc_type)
        dot_p = tl.zeros((BLOCK_B,), dtype=acc_type)
        dot_n = tl.zeros((BLOCK_B,), dtype=acc_type)
        for start in range(0, dim, BLOCK_D):
            a, p, n = _load_pair_features(anchors_ptr, candidates_ptr, anchor_offsets, positive_offsets,
                                          negative_offsets, row_ok, has_positive, has_negative, start, dim,
                                          FP64, BLOCK_D)
            anchor_sq += tl.sum(a * a, axis=1)
            positive_sq += tl.sum(p * p, axis=1)
            negative_sq += tl.sum(n * n, axis=1)
            dot_p += tl.sum(a * p, axis=1)
            dot_n += tl.sum(a * n, axis=1)
        anchor_length = correctly_rounded_sqrt(anchor_sq, FP64)
        positive_length = correctly_rounded_sqrt(positive_sq, FP64)
        negative_length = correctly_rounded_sqrt(negative_sq, FP64)
        anchor_scale = tl.maximum(anchor_length, 1e-12)
        positive_scale = tl.maximum(positive_length, 1e-12)
        negative_scale = tl.maximum(negative_length, 1e-12)
        cos_p = dot_p / (anchor_scale * positive_scale)
        cos_n = dot_n / (anchor_scale * negative_scale)
        on_anchor = tl.where(anchor_length > 1e-12,
                             (grad_p * cos_p + grad_n * cos_n) / (anchor_scale * anchor_scale), 0.0)
        on_positive = -grad_p / (anchor_scale * positive_scale)
        on_negative = -grad_n / (anchor_scale * negative_scale)
        positive_on_anchor = on_positive
        negative_on_anchor = on_negative
        positive_on_row = tl.where(positive_length > 1e-12, grad_p * cos_p / (positive_scale * positive_scale), 0.0)
        negative_on_row = tl.where(negative_length > 1e-12, grad_n * cos_n / (negative_scale * negative_scale), 0.0)
    else:
        if METRIC == 0:  # 0 where the forward's clamp was active, exactly as the reference's autograd
            floor = correctly_rounded_sqrt(tl.full((BLOCK_B,), 1e-12, acc_type), FP64)
            dist_p = tl.load(dist_ap_ptr + rows, mask=row_ok, other=0.0).to(acc_type)
            dist_n = tl.load(dist_an_ptr + rows, mask=row_ok, other=0.0).to(acc_type)
            weight_p = tl.where(dist_p > floor, grad_p / tl.where(dist_p > floor, dist_p, 1.0), 0.0)
            weight_n = tl.where(dist_n > floor, grad_n / tl.where(dist_n > floor, dist_n, 1.0), 0.0)
        else:
            weight_p = 2.0 * grad_p
            weight_n = 2.0 * grad_n
        # Difference form w (a - c): exact zero for equal rows, no cancellation between large terms.
        on_anchor = tl.zeros((BLOCK_B,), dtype=acc_type)
        on_positive = weight_p
        on_negative = weight_n
        positive_on_anchor = -weight_p
        negative_on_anchor = -weight_n
        positive_on_row = tl.zeros((BLOCK_B,), dtype=acc_type)
        negative_on_row = tl.zeros((BLOCK_B,), dtype=acc_type)

    tl.store(coefficients_ptr + rows, on_anchor, mask=row_ok)
    tl.store(coefficients_ptr + plane + rows, on_positive, mask=row_ok)
    tl.store(coefficients_ptr + 2 * plane + rows, on_negative, mask=row_ok)
    tl.store(coefficients_ptr + 3 * plane + rows, positive_on_anchor, mask=row_ok)
    tl.store(coefficients_ptr + 4 * plane + rows, negative_on_anchor, mask=row_ok)
    tl.store(coefficients_ptr + 5 * plane + rows, positive_on_row, mask=row_ok)
    tl.store(coefficients_ptr + 6 * plane + rows, negative_on_row, mask=row_ok)

    if WRITE_ANCHOR_GRAD:
        grad_offsets = rows.to(tl.int64) * grad_row_stride
        for start in range(0, dim, BLOCK_D):
            a, p, n = _load_pair_features(anchors_ptr, candidates_ptr, anchor_offsets, positive_offsets,
                                          negative_offsets, row_ok, has_positive, has_negative, start, dim,
                                          FP64, BLOCK_D)
            if METRIC == 2:
                grad = on_anchor[:, None] * a + on_positive[:, None] * p + on_negative[:, None] * n
            else:
                grad = on_positive[:, None] * (a - p) + on_negative[:, None] * (a - n)
            feats = start + tl.arange(0, BLOCK_D)
            tl.store(grad_anchors_ptr + grad_offsets[:, None] + feats[None, :],
                     grad.to(grad_anchors_ptr.dtype.element_ty), mask=row_ok[:, None] & (feats < dim)[None, :])


@triton.jit
def _chosen_rows_kernel(
    anchors_ptr, rows_ptr, positive_ptr, negative_ptr, coefficients_ptr, entry_order_ptr, entry_offsets_ptr, grad_ptr,
    num_anchors, dim, anchor_row_stride, row_stride, grad_row_stride,
    METRIC: tl.constexpr, FP64: tl.constexpr, ANCHOR_PART: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):
    acc_type = tl.float64 if FP64 else tl.float32
    row = tl.program_id(0).to(tl.int64)
    first = tl.load(entry_offsets_ptr + row)
    last = tl.load(entry_offsets_ptr + row + 1)
    row_offset = row * row_stride
    plane = tl.cast(num_anchors, tl.int64)  # coefficient slot k of anchor i is k * B + i: int64, as row
    if ANCHOR_PART:  # the rows are the anchors too: row j's own pairs (cosine: on_anchor; else unused)
        positive = tl.load(positive_ptr + row)
        negative = tl.load(negative_ptr + row)
        on_anchor = tl.load(coefficients_ptr + row)
        on_positive = tl.load(coefficients_ptr + plane + row)
        on_negative = tl.load(coefficients_ptr + 2 * plane + row)
        positive_offset = tl.maximum(positive, 0) * row_stride
        negative_offset = tl.maximum(negative, 0) * row_stride
    for start in range(0, dim, BLOCK_D):
        feats = start + tl.arange(0, BLOCK_D)
        feat_ok = feats < dim
        own = tl.load(rows_ptr + row_offset + feats, mask=feat_ok, other=0.0).to(acc_type)
        total = tl.zeros((BLOCK_D,), dtype=acc_type)
        # The anchors that chose this row, BLOCK_E at a time in CSR order: a fixed order, no atomics.
        for first_slot in range(first, last, BLOCK_E):
            slots = first_slot + tl.arange(0, BLOCK_E)
            slot_ok = slots < last
            entry = tl.load(entry_order_ptr + slots, mask=slot_ok, other=0)
            anchor = tl.where(entry >= num_anchors, entry - num_anchors, entry)
            entry_on_anchor = tl.load(coefficients_ptr + 3 * plane + entry, mask=slot_ok, other=0.0)
            a = tl.load(anchors_ptr + anchor[:, None] * anchor_row_stride + feats[None, :],
                        mask=slot_ok[:, None] & feat_ok[None, :], other=0.0).to(acc_type)
            if METRIC == 2:
                entry_on_row = tl.load(coefficients_ptr + 5 * plane + entry, mask=slot_ok, other=0.0)
                total += tl.sum(entry_on_anchor[:, None] * a + entry_on_row[:, None] * own[None, :], axis=0)
            else:
                total += tl.sum(entry_on_anchor[:, None] * (a - own[None, :]), axis=0)
        if ANCHOR_PART:
            # Broadcast the scalar indices first: the interpreter rejects a scalar-and-vector mask.
            p_ok = feat_ok & ((feats * 0 + positive) >= 0)
            n_ok = feat_ok & ((feats * 0 + negative) >= 0)
            p = tl.load(rows_ptr + positive_offset + feats, mask=p_ok, other=0.0).to(acc_type)
            n = tl.load(rows_ptr + negative_offset + feats, mask=n_ok, other=0.0).to(acc_type)
            if METRIC == 2:
                total += on_anchor * own + on_positive * p + on_negative * n
            else:
                total += on_positive * (own - p) + on_negative * (own - n)
        tl.store(grad_ptr + row * grad_row_stride + feats, total.to(grad_ptr.dtype.element_ty), mask=feat_ok)


# Under TRITON_INTERPRET=1 triton.jit returns an interpreter object: every block op is one numpy call there,
# so fewer, larger programs run faster.
_COMPILED = isinstance(_chosen_rows_kernel, JITFunction)


def _blocks(dim: int) -> tuple[dict, dict]:
    """Launch parameters of the two kernels for feature dimension `dim` (>= 1)."""
    width = triton.next_power_of_2(dim)
    if not _COMPILED:
        return dict(BLOCK_B=16, BLOCK_D=min(width, 128)), dict(BLOCK_E=8, BLOCK_D=min(width, 256))
    # Both kernels are memory bound: rows of up to 128 (256) features per step, 4 warps.
    return (dict(BLOCK_B=32, BLOCK_D=min(width, 128), num_warps=4),
            dict(BLOCK_E=4, BLOCK_D=min(width, 256), num_warps=4))


def _check_vector(name: str, values: torch.Tensor, length: int, dtype: torch.dtype, device: torch.device) -> None:
    wrong = values.dtype != dtype or values.shape != (length,) or values.device != device
    if wrong or not values.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous {dtype} ({length},) tensor on {device}, "
                         f"got {tuple(values.shape)} {values.dtype} on {values.device}")


def batch_hard_mine_backward(
    anchors: torch.Tensor,
    candidates: torch.Tensor | None,
    dist_ap: torch.Tensor,
    dist_an: torch.Tensor,
    positive_index: torch.Tensor,
    negative_index: torch.Tensor,
    grad_ap: torch.Tensor,
    grad_an: torch.Tensor,
    metric: str,
    entry_order: torch.Tensor,
    entry_offsets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of sum_i grad_ap[i] d(a_i, c_p(i)) + grad_an[i] d(a_i, c_n(i)) (see the module docstring).

    anchors (B, D), candidates (C, D) or None (the anchors themselves): one floating dtype, unit inner stride.
    dist_ap, dist_an, grad_ap, grad_an (B,): contiguous, float32 (float64 for float64 inputs); positive_index,
    negative_index (B,): contiguous int64 in [-1, C), as batch_hard_mine returns them.
    entry_order (2B,) int64, entry_offsets (R + 1,) int64 (R = C, or B without candidates): the inverse index,
    entries e < B for anchor e's positive and B + i for anchor i's negative, stably sorted by row; row j's
    entries are entry_order[entry_offsets[j]:entry_offsets[j + 1]].
    Returns (grad_anchors (B, D), grad_candidates (C, D)) in the input dtype; with candidates=None,
    (grad_anchors, None) where grad_anchors holds both the anchor and the candidate parts.
    """
    if metric not in METRIC_CODES:
        raise ValueError(f"metric: expected one of {tuple(METRIC_CODES)}, got {metric!r}")
    check_features("anchors", anchors)
    same_rows = candidates is None
    rows = anchors if same_rows else candidates
    if not same_rows:
        check_features("candidates", candidates)
        mismatch = candidates.dtype != anchors.dtype or candidates.device != anchors.device
        if mismatch or candidates.shape[1] != anchors.shape[1]:
            raise ValueError(f"candidates {tuple(candidates.shape)} {candidates.dtype} on {candidates.device} do not "
                             f"match anchors {tuple(anchors.shape)} {anchors.dtype} on {anchors.device}")
    (num_anchors, dim), num_rows, device = anchors.shape, rows.shape[0], anchors.device
    fp64 = anchors.dtype == torch.float64
    acc_dtype = torch.float64 if fp64 else torch.float32
    for name, values in (("dist_ap", dist_ap), ("dist_an", dist_an), ("grad_ap", grad_ap), ("grad_an", grad_an)):
        _check_vector(name, values, num_anchors, acc_dtype, device)
    _check_vector("positive_index", positive_index, num_anchors, torch.int64, device)
    _check_vector("negative_index", negative_index, num_anchors, torch.int64, device)
    _check_vector("entry_order", entry_order, 2 * num_anchors, torch.int64, device)
    _check_vector("entry_offsets", entry_offsets, num_rows + 1, torch.int64, device)

    grad_anchors = torch.empty((num_anchors, dim), dtype=anchors.dtype, device=device)
    grad_rows = grad_anchors if same_rows else torch.empty((num_rows, dim), dtype=anchors.dtype, device=device)
    if dim == 0:
        return grad_anchors, None if same_rows else grad_rows
    coefficients = torch.empty(_COEFFICIENT_ROWS * num_anchors, dtype=acc_dtype, device=device)
    pair_blocks, row_blocks = _blocks(dim)
    metric_code = METRIC_CODES[metric]
    if num_anchors > 0:
        grid = (triton.cdiv(num_anchors, pair_blocks["BLOCK_B"]),)
        _pair_coefficients_kernel[grid](
            anchors, rows, positive_index, negative_index, dist_ap, dist_an, grad_ap, grad_an,
            coefficients, grad_anchors,
            num_anchors, dim, anchors.stride(0), rows.stride(0), grad_anchors.stride(0),
            METRIC=metric_code, FP64=fp64, WRITE_ANCHOR_GRAD=not same_rows, **pair_blocks,
        )
    if num_rows > 0:
        _chosen_rows_kernel[(num_rows,)](
            anchors, rows, positive_index, negative_index, coefficients, entry_order, entry_offsets, grad_rows,
            num_anchors, dim, anchors.stride(0), rows.stride(0), grad_rows.stride(0),
            METRIC=metric_code, FP64=fp64, ANCHOR_PART=same_rows, **row_blocks,
        )
    return grad_anchors, None if same_rows else grad_rows
