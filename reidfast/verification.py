"""Pair verification metrics of a (Q, G) distance matrix: ROC AUC, TPR at FPR targets, precision/recall/F1
at a threshold (scikit-learn), exact or estimated from a weighted sample of pairs.

    result = reidfast.verification_metrics(distmat, q_pids, g_pids, q_camids, g_camids)
    print(result.summary())           # result.roc_auc, result.tpr_at_fpr[1e-3], result.f1

ReIDEvaluator.compute(verification=True) calls it on the evaluator's distances.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ._arrays import as_tensor
from ._optional import require
from .ops.evaluation import _count_nan

__all__ = ["VerificationResult", "verification_metrics"]

FPR_TARGETS = (1e-4, 1e-3, 1e-2)
DEFAULT_MAX_PAIRS = 2_000_000


@dataclass(frozen=True, eq=False)
class VerificationResult:
    """Pair verification metrics over valid query-gallery pairs (same pid = positive, other pid = negative;
    pairs of the query's pid in the query's camera are left out, as in the ranking protocol).

    roc_auc: area under the ROC curve of -distance. tpr_at_fpr: {target FPR: largest TPR among distance
    thresholds whose FPR <= target} (no interpolation; 0.0 when none reaches it). threshold: the distance
    at or below which a pair is called "same identity" (given, or the one maximising F1); precision,
    recall, f1, accuracy at that threshold. When the pairs exceeded max_pairs, sampled is True and the
    metrics are weighted estimates from a seeded sample (see verification_metrics).
    """

    roc_auc: float
    tpr_at_fpr: dict[float, float]
    threshold: float
    threshold_is_best_f1: bool
    precision: float
    recall: float
    f1: float
    accuracy: float
    num_positive_pairs: int
    num_negative_pairs: int
    num_sampled_positive_pairs: int
    num_sampled_negative_pairs: int
    sampled: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (JSON-ready); tpr_at_fpr keys become strings like "1e-04"."""
        values = {k: v for k, v in self.__dict__.items() if k != "tpr_at_fpr"}
        values["tpr_at_fpr"] = {f"{target:.0e}": tpr for target, tpr in self.tpr_at_fpr.items()}
        return values

    def summary(self) -> str:
        """A small text table of the verification metrics."""
        how = "best-F1" if self.threshold_is_best_f1 else "given"
        pairs = f"{self.num_positive_pairs} positive / {self.num_negative_pairs} negative pairs"
        if self.sampled:
            pairs += f" (sampled {self.num_sampled_positive_pairs} / {self.num_sampled_negative_pairs})"
        lines = ["Verification", f"  {pairs}", f"  {'ROC AUC':<14}{100 * self.roc_auc:7.2f}%"]
        lines += [f"  {f'TPR@FPR={t:.0e}':<14}{100 * v:7.2f}%" for t, v in self.tpr_at_fpr.items()]
        lines.append(f"  {how} threshold: distance <= {self.threshold:.6g}")
        lines += [f"  {name:<14}{100 * value:7.2f}%" for name, value in (
            ("precision", self.precision), ("recall", self.recall), ("F1", self.f1), ("accuracy", self.accuracy))]
        return "\n".join(lines)

    __str__ = summary


def _labels_np(values: Any, name: str, length: int) -> np.ndarray:
    """Integer labels (or floats with integral values), any array type -> int64 numpy (length,)."""
    tensor, _ = as_tensor(values, name)
    if tensor.dim() != 1 or tensor.shape[0] != length:
        raise ValueError(f"{name}: expected a 1-D array of length {length}, got shape {tuple(tensor.shape)}")
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"{name}: expected integer labels, got dtype {tensor.dtype}")
    if tensor.is_floating_point() and not bool((tensor == tensor.round()).all()):
        raise ValueError(f"{name}: expected integer labels, got {tensor.dtype} values that are not integral")
    return tensor.numpy().astype(np.int64)


def _gallery_count_per_query(gallery_keys: np.ndarray, query_keys: np.ndarray) -> np.ndarray:
    """(G, c) and (Q, c) int64 key rows -> (Q,) number of gallery rows equal to each query's key."""
    _, group = np.unique(np.concatenate([gallery_keys, query_keys]), axis=0, return_inverse=True)
    group = group.reshape(-1)
    gallery_counts = np.bincount(group[: gallery_keys.shape[0]], minlength=int(group.max()) + 1)
    return gallery_counts[group[gallery_keys.shape[0] :]]


def _valid_pairs(distmat, q_pids, g_pids, q_camids, g_camids, max_pairs: int, rng: np.random.Generator):
    """-> (distances, is_positive, weights or None, #positive pairs, #negative pairs), all pairs or a sample."""
    num_query, num_gallery = distmat.shape
    # Pairs per query from label counts, without a Q x G mask.
    same_pid_per_query = _gallery_count_per_query(g_pids[:, None], q_pids[:, None])
    same_camera = _gallery_count_per_query(np.stack([g_pids, g_camids], 1), np.stack([q_pids, q_camids], 1))
    num_positive = int((same_pid_per_query - same_camera).sum())
    num_negative = int((num_gallery - same_pid_per_query).sum())

    if num_positive + num_negative <= max_pairs:  # exact: every valid pair, in row-major order
        same_pid = q_pids[:, None] == g_pids[None, :]
        valid = ~(same_pid & (q_camids[:, None] == g_camids[None, :]))
        return distmat[valid], same_pid[valid], None, num_positive, num_negative

    # Sampled: positives are few (kept whole up to half the budget), negatives drawn uniformly with
    # replacement by rejection; weights make every metric an unbiased estimate of the full-pair value.
    positive_query, positive_gallery = [], []
    order = np.argsort(g_pids, kind="stable")
    sorted_pids = g_pids[order]
    for q in np.flatnonzero(same_pid_per_query - same_camera):
        members = order[np.searchsorted(sorted_pids, q_pids[q]) : np.searchsorted(sorted_pids, q_pids[q], "right")]
        members = members[g_camids[members] != q_camids[q]]
        positive_query.append(np.full(members.size, q))
        positive_gallery.append(members)
    positive_query = np.concatenate(positive_query) if positive_query else np.zeros(0, np.int64)
    positive_gallery = np.concatenate(positive_gallery) if positive_gallery else np.zeros(0, np.int64)
    positive_budget = min(num_positive, max(1, max_pairs // 2))
    if positive_budget < num_positive:
        keep = np.sort(rng.choice(num_positive, size=positive_budget, replace=False))
        positive_query, positive_gallery = positive_query[keep], positive_gallery[keep]
    negative_budget = min(num_negative, max_pairs - positive_budget)
    negative_query, negative_gallery = [], []
    drawn = 0
    while drawn < negative_budget:
        flat = rng.integers(0, num_query * num_gallery, size=negative_budget - drawn)
        query, gallery = np.divmod(flat, num_gallery)
        keep = q_pids[query] != g_pids[gallery]
        negative_query.append(query[keep])
        negative_gallery.append(gallery[keep])
        drawn += int(keep.sum())
    query = np.concatenate([positive_query, *negative_query])
    gallery = np.concatenate([positive_gallery, *negative_gallery])
    is_positive = np.arange(query.size) < positive_query.size
    weights = np.where(is_positive, num_positive / max(positive_query.size, 1), num_negative / max(drawn, 1))
    return distmat[query, gallery], is_positive, weights, num_positive, num_negative


def verification_metrics(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    threshold: float | None = None,
    *,
    fpr_targets: Sequence[float] = FPR_TARGETS,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    seed: int | None = 0,
) -> VerificationResult:
    """Verification metrics of the valid query-gallery pairs of a (Q, G) distance matrix (scikit-learn).

    distmat: (Q, G) distances, any array type (copied to host memory). q_pids, q_camids: (Q,); g_pids,
    g_camids: (G,). A pair is positive when the pids agree; pairs with the query's pid and camera are left
    out. threshold: a distance (pairs at or below it are called positive), or None for the one that
    maximises F1 on the precision-recall curve.

    Memory: with more than max_pairs valid pairs, all positive pairs (up to max_pairs / 2, else a sample)
    and uniformly drawn negative pairs (with replacement, np.random.default_rng(seed)) fill the budget,
    weighted by (pairs of the class) / (sampled pairs of the class): the metrics are then unbiased
    estimates. Below the budget they are exact. Needs both positive and negative pairs (else ValueError).
    """
    require("sklearn", "verification metrics")
    from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

    distmat_t, _ = as_tensor(distmat, "distmat")
    if distmat_t.dim() != 2 or distmat_t.shape[0] == 0 or distmat_t.shape[1] == 0:
        raise ValueError(f"distmat: expected a non-empty 2-D (num_query, num_gallery) array, got shape {tuple(distmat_t.shape)}")
    if distmat_t.is_floating_point() and _count_nan(distmat_t):
        raise ValueError("distmat: expected comparable distances, got NaN; check the features for NaN")
    distances_all = (distmat_t.float() if distmat_t.dtype == torch.bfloat16 else distmat_t).detach().cpu().numpy()
    num_query, num_gallery = distances_all.shape
    q_pids_np = _labels_np(q_pids, "q_pids", num_query)
    g_pids_np = _labels_np(g_pids, "g_pids", num_gallery)
    q_camids_np = _labels_np(q_camids, "q_camids", num_query)
    g_camids_np = _labels_np(g_camids, "g_camids", num_gallery)
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, numbers.Integral) or max_pairs < 2:
        raise ValueError(f"max_pairs: expected an integer >= 2, got {max_pairs!r}")
    targets = tuple(float(t) for t in fpr_targets)
    if any(not 0.0 < t <= 1.0 for t in targets):
        raise ValueError(f"fpr_targets: expected values in (0, 1], got {fpr_targets!r}")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or math.isnan(threshold)):
        raise ValueError(f"threshold: expected a distance (a real number) or None, got {threshold!r}")

    rng = np.random.default_rng(seed)
    distances, is_positive, weights, num_positive, num_negative = _valid_pairs(
        distances_all, q_pids_np, g_pids_np, q_camids_np, g_camids_np, int(max_pairs), rng
    )
    if num_positive == 0 or num_negative == 0:
        raise ValueError(
            f"verification needs positive and negative pairs, got {num_positive} positive and {num_negative} "
            "negative valid query-gallery pairs; check the pids and camids"
        )
    distances = distances.astype(np.float64)
    scores = -distances  # scikit-learn: larger score = more likely positive
    roc_auc = float(roc_auc_score(is_positive, scores, sample_weight=weights))
    fpr, tpr, _ = roc_curve(is_positive, scores, sample_weight=weights, drop_intermediate=False)
    tpr_at_fpr = {t: float(tpr[fpr <= t].max()) for t in targets}  # fpr[0] = 0: never empty

    if threshold is None:
        precision, recall, score_thresholds = precision_recall_curve(is_positive, scores, sample_weight=weights)
        precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
        with np.errstate(invalid="ignore", divide="ignore"):
            f1_curve = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        chosen_threshold = float(-score_thresholds[int(np.argmax(f1_curve))])
    else:
        chosen_threshold = float(threshold)

    w = np.ones_like(distances) if weights is None else weights
    predicted = distances <= chosen_threshold
    true_positive = float(w[predicted & is_positive].sum())
    false_positive = float(w[predicted & ~is_positive].sum())
    false_negative = float(w[~predicted & is_positive].sum())
    true_negative = float(w[~predicted & ~is_positive].sum())
    precision_value = true_positive / (true_positive + false_positive) if true_positive + false_positive else 0.0
    recall_value = true_positive / (true_positive + false_negative)
    f1 = 2 * precision_value * recall_value / (precision_value + recall_value) if precision_value + recall_value else 0.0
    accuracy = (true_positive + true_negative) / (true_positive + false_positive + false_negative + true_negative)
    return VerificationResult(
        roc_auc=roc_auc,
        tpr_at_fpr=tpr_at_fpr,
        threshold=chosen_threshold,
        threshold_is_best_f1=threshold is None,
        precision=precision_value,
        recall=recall_value,
        f1=f1,
        accuracy=accuracy,
        num_positive_pairs=num_positive,
        num_negative_pairs=num_negative,
        num_sampled_positive_pairs=int(is_positive.sum()),
        num_sampled_negative_pairs=int((~is_positive).sum()),
        sampled=weights is not None,
    )
