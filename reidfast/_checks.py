"""Argument checks that the public ops and the reference (reidfast/reference) share: what counts as valid
input and the error each bad input gets. They decide no result: the reference stays an independent oracle
of the computation, and the ops need nothing private from it."""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from reidfast._arrays import has_nonfinite
from reidfast.reference.distance import METRICS

REDUCTIONS = ("mean", "sum", "none")
SOFT_MARGIN = "soft"
NO_INDEX = -1


def _has_nonfinite_rows(array: np.ndarray, block_elements: int = 1 << 24) -> bool:
    """np.isfinite(array).all() is False, tested a block of rows at a time (no N x N boolean mask)."""
    step = max(1, block_elements // max(1, array.shape[1]))
    return any(not np.isfinite(array[s:s + step]).all() for s in range(0, array.shape[0], step))


def check_distance_shapes(q_g, q_q, g_g) -> None:
    """q_q (Q, Q) and g_g (G, G) must match q_g (Q, G) (numpy arrays or tensors); ValueError naming the argument."""
    num_query, num_gallery = q_g.shape
    if tuple(q_q.shape) != (num_query, num_query):
        raise ValueError(
            f"q_q_dist: expected shape (Q, Q) = {(num_query, num_query)} to match q_g_dist {tuple(q_g.shape)}, "
            f"got {tuple(q_q.shape)}"
        )
    if tuple(g_g.shape) != (num_gallery, num_gallery):
        raise ValueError(
            f"g_g_dist: expected shape (G, G) = {(num_gallery, num_gallery)} to match q_g_dist "
            f"{tuple(q_g.shape)}, got {tuple(g_g.shape)}"
        )


def check_rerank_distances(
    q_g_dist: np.ndarray, q_q_dist: np.ndarray, g_g_dist: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As floating arrays (float64 kept, anything else float32), with shapes (Q,G), (Q,Q), (G,G) checked."""
    arrays = {}
    for name, value in (("q_g_dist", q_g_dist), ("q_q_dist", q_q_dist), ("g_g_dist", g_g_dist)):
        array = np.asarray(value)
        if array.ndim != 2:
            raise ValueError(f"{name}: expected a 2-D distance matrix, got shape {array.shape}")
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise ValueError(f"{name}: expected real numbers, got dtype {array.dtype}")
        dtype = np.float64 if array.dtype == np.float64 else np.float32
        array = array.astype(dtype, copy=False)
        if _has_nonfinite_rows(array):
            raise ValueError(f"{name}: expected finite values (re-ranking needs them), got NaN or Inf")
        arrays[name] = array
    q_g, q_q, g_g = arrays["q_g_dist"], arrays["q_q_dist"], arrays["g_g_dist"]
    check_distance_shapes(q_g, q_q, g_g)
    return q_g, q_q, g_g


def check_rerank_parameters(k1: int, k2: int, lambda_value: float, num_all: int) -> tuple[int, int, float]:
    """1 <= k2 <= k1 < num_all integers and lambda_value in [0, 1], as plain python numbers."""
    for name, value in (("k1", k1), ("k2", k2)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
    k1, k2 = int(k1), int(k2)
    if not 1 <= k1 < num_all:
        raise ValueError(
            f"k1: expected 1 <= k1 < Q + G = {num_all} (the number of queries plus gallery items), got {k1}"
        )
    if not 1 <= k2 <= k1:
        raise ValueError(f"k2: expected 1 <= k2 <= k1 = {k1}, got {k2}")
    if isinstance(lambda_value, (bool, np.bool_)) or not isinstance(lambda_value, numbers.Real):
        raise ValueError(f"lambda_value: expected a real number in [0, 1], got {lambda_value!r}")
    lambda_value = float(lambda_value)  # a python float keeps the float32 arithmetic in float32
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value: expected a real number in [0, 1], got {lambda_value!r}")
    return k1, k2, lambda_value


def check_rerank_features(features: np.ndarray, name: str) -> np.ndarray:
    """A C-contiguous float32 (N, D) array of finite numbers."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    array = np.asarray(features)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (N, D) feature matrix, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name}: expected real numbers, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: expected finite values, got NaN or Inf")
    return array


def check_some_query_valid(num_valid: int) -> None:
    if num_valid == 0:
        raise ValueError(
            "all queries have no valid gallery match (after removing gallery items with the same pid and "
            "camid as the query, no gallery item shares the query's pid); check q_pids/g_pids and camids"
        )


# --- batch-hard triplet loss ------------------------------------------------------------------------


def _is_integer_dtype(dtype: torch.dtype) -> bool:
    return not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool


def _check_margin(margin: float | str) -> None:
    if isinstance(margin, str):
        if margin != SOFT_MARGIN:
            raise ValueError(f"margin: expected a non-negative number or {SOFT_MARGIN!r}, got {margin!r}")
        return
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise ValueError(f"margin: expected a non-negative number or {SOFT_MARGIN!r}, got {margin!r}")
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin: expected a finite non-negative number or {SOFT_MARGIN!r}, got {margin!r}")


def _check_features(
    name: str, features: torch.Tensor, device: torch.device | None = None, check_values: bool = True
) -> None:
    if not isinstance(features, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(features).__name__}")
    if device is not None and features.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the embeddings' device), got {features.device}")
    if features.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D (N, D) tensor, got shape {tuple(features.shape)}")
    if not features.dtype.is_floating_point:
        raise ValueError(f"{name}: expected a floating-point dtype, got {features.dtype}")
    if check_values and has_nonfinite(features):
        raise ValueError(f"{name}: expected finite values, got NaN or Inf")


def _check_labels(name: str, labels: torch.Tensor, expected_length: int, device: torch.device) -> None:
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1 or not _is_integer_dtype(labels.dtype):
        raise ValueError(f"{name}: expected a 1-D integer tensor, got shape {tuple(labels.shape)} {labels.dtype}")
    if labels.shape[0] != expected_length:
        raise ValueError(f"{name}: expected length {expected_length}, got {labels.shape[0]}")
    if labels.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the embeddings' device), got {labels.device}")


def validate_triplet_arguments(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float | str,
    metric: str,
    reduction: str,
    candidates: torch.Tensor | None,
    candidate_labels: torch.Tensor | None,
    anchor_index: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Check every argument (ValueError naming it) -> (candidates, candidate_labels, anchor_index, against_batch).

    anchor_index comes back as a (B,) int64 tensor (-1: absent): arange(B) when scoring against the batch,
    all -1 for explicit candidates without one. Shared by every backend. Data-dependent checks (NaN/Inf,
    anchor_index values) are skipped while torch.compile traces, since they need a host sync.
    """
    tracing = torch.compiler.is_compiling()
    _check_features("embeddings", embeddings, check_values=not tracing)
    device = embeddings.device
    num_anchors = embeddings.shape[0]
    _check_labels("labels", labels, num_anchors, device)
    _check_margin(margin)
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
    if (candidates is None) != (candidate_labels is None):
        missing, given = ("candidate_labels", "candidates") if candidate_labels is None else (
            "candidates", "candidate_labels")
        raise ValueError(f"{missing}: expected a tensor, since {given} is given (both or neither), got None")

    against_batch = candidates is None
    if against_batch:
        candidates, candidate_labels = embeddings, labels
    else:
        _check_features("candidates", candidates, device, check_values=not tracing)
        if candidates.shape[1] != embeddings.shape[1]:
            raise ValueError(
                f"candidates: expected dimension {embeddings.shape[1]} (the embeddings'), got {candidates.shape[1]}"
            )
        _check_labels("candidate_labels", candidate_labels, candidates.shape[0], device)
    num_candidates = candidates.shape[0]

    if anchor_index is None:
        if against_batch:
            return candidates, candidate_labels, torch.arange(num_anchors, device=device), True
        return candidates, candidate_labels, torch.full((num_anchors,), NO_INDEX, device=device), False
    _check_labels("anchor_index", anchor_index, num_anchors, device)
    if not tracing:
        if bool(((anchor_index < NO_INDEX) | (anchor_index >= num_candidates)).any()):
            raise ValueError(f"anchor_index: expected values in [-1, {num_candidates}) (the candidate columns), "
                             "got values outside it")
        present = anchor_index >= 0
        # A present anchor must carry its own label; a mismatch means the indices are misaligned.
        if bool((labels[present] != candidate_labels[anchor_index[present]]).any()):
            raise ValueError("anchor_index: expected candidates with the anchor's label, got candidates whose label "
                             "differs (misaligned indices)")
    return candidates, candidate_labels, anchor_index, against_batch
