"""rf.evaluate's argument checks: the distance matrix (2-D, real, non-empty, no NaN) and the label vectors
(1-D integers, one per row or column), converted once to host int64 tensors (Labels)."""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import torch

from ..._arrays import as_tensor
from ...reference import evaluation as reference

_NAN_CHECK_BLOCK_ELEMENTS = 1 << 24  # a 16 MiB boolean temporary at most


@dataclass(frozen=True)
class Labels:
    """Validated inputs: int64 host label vectors and the effective max_rank."""

    q_pids: torch.Tensor
    g_pids: torch.Tensor
    q_camids: torch.Tensor
    g_camids: torch.Tensor
    max_rank: int


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value}")
    return int(value)


def label_vector(values: Any, name: str, length: int, length_source: str) -> torch.Tensor:
    """Integer labels (or floats with integral values), any array type -> contiguous int64 host tensor."""
    tensor, _ = as_tensor(values, name)
    if tensor.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D array of labels, got shape {tuple(tensor.shape)}")
    if tensor.shape[0] != length:
        raise ValueError(f"{name}: expected length {length} (distmat's {length_source}), got {tensor.shape[0]}")
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"{name}: expected integer labels, got dtype {tensor.dtype}")
    if tensor.is_floating_point():
        if not bool(torch.isfinite(tensor).all()) or not bool((tensor == tensor.round()).all()):
            raise ValueError(f"{name}: expected integer labels, got {tensor.dtype} values that are not integral")
    return tensor.to(torch.int64).contiguous()


def count_nan(distmat: torch.Tensor) -> int:
    """NaN count on the distmat's device, without a full-size temporary: one sum first (a NaN anywhere makes
    it NaN; a NaN sum without NaN needs +inf and -inf), then, only if it is NaN, a count in blocks of rows."""
    if not bool(torch.isnan(distmat.sum())):
        return 0
    rows_per_block = max(1, _NAN_CHECK_BLOCK_ELEMENTS // distmat.shape[1])
    return sum(
        int(torch.isnan(distmat[start : start + rows_per_block]).count_nonzero())
        for start in range(0, distmat.shape[0], rows_per_block)
    )


def check_distmat(distmat: Any) -> torch.Tensor:
    tensor, _ = as_tensor(distmat, "distmat")
    tensor = tensor.detach()
    if tensor.dim() != 2:
        raise ValueError(f"distmat: expected a 2-D (num_query, num_gallery) array, got shape {tuple(tensor.shape)}")
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"distmat: expected real distances, got dtype {tensor.dtype}")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"distmat: expected at least one query row and one gallery column, got shape {tuple(tensor.shape)}")
    if tensor.is_floating_point():
        num_nan = count_nan(tensor)
        if num_nan:
            raise ValueError(
                f"distmat: expected comparable distances (inf is allowed, NaN is not), got {num_nan} NaN distance(s); "
                "check the features for NaN"
            )
    return tensor


def validate(distmat: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any, max_rank: Any) -> tuple[torch.Tensor, Labels]:
    distmat_t = check_distmat(distmat)
    num_query, num_gallery = distmat_t.shape
    labels = dict(
        q_pids=label_vector(q_pids, "q_pids", num_query, "rows (queries)"),
        g_pids=label_vector(g_pids, "g_pids", num_gallery, "columns (gallery items)"),
        q_camids=label_vector(q_camids, "q_camids", num_query, "rows (queries)"),
        g_camids=label_vector(g_camids, "g_camids", num_gallery, "columns (gallery items)"),
    )
    max_rank = reference.cut_max_rank(check_positive_int("max_rank", max_rank), num_gallery)
    return distmat_t, Labels(max_rank=max_rank, **labels)
