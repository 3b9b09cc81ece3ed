"""ReIDEvaluator: accumulate features batch by batch, then CMC/mAP/mINP, re-ranking and verification metrics.

    evaluator = reidfast.ReIDEvaluator(metric="euclidean", rerank=True)
    with torch.no_grad():
        for images, pids, camids, is_query in loader:
            evaluator.update(model(images), pids, camids, is_query)
    result = evaluator.compute(verification=True)
    print(result.summary())           # result.mAP, result.rank1, result.reranked.mAP, result.verification.roc_auc
    evaluator.reset()                 # before the next evaluation

Feature post-processing is the caller's: L2-normalise (`F.normalize(f, dim=1)`) or average the features of
an image and its horizontal flip (`(model(x) + model(x.flip(3))) / 2`) before `update`, as the model's
recipe prescribes; `metric="cosine"` normalises inside the distance.

Under torch.distributed (initialised, world size > 1), `compute` gathers every rank's features and labels
(all_gather of padded tensors, on the GPU for NCCL, on the CPU otherwise) in rank order, and every rank
returns the same result. Each sample must be fed on exactly one rank: DistributedSampler pads the last
batch with repeated samples, which would then count twice (use drop_last or an unpadded sampler).
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
from .ops.distance import pairwise_distance
from .ops.evaluate_features import evaluate_features
from .ops.evaluation import PROTOCOLS, RankingResult, _count_nan, evaluate
from .reference.distance import METRICS

__all__ = ["EvaluatorResult", "ReIDEvaluator", "VerificationResult", "ranking_table", "verification_metrics"]

FPR_TARGETS = (1e-4, 1e-3, 1e-2)
DEFAULT_MAX_PAIRS = 2_000_000


# -------------------------------------------------------------------------------------------------------
# Verification metrics.
# -------------------------------------------------------------------------------------------------------
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
        raise ValueError("distmat: contains NaN distances; check the features for NaN")
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


# -------------------------------------------------------------------------------------------------------
# The evaluator.
# -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class EvaluatorResult:
    """What ReIDEvaluator.compute returns: the ranking result, the re-ranked one (when asked) and the
    verification metrics (when asked). mAP, mINP, cmc and rank1/5/10 read the plain ranking's values."""

    ranking: RankingResult
    reranked: RankingResult | None = None
    verification: VerificationResult | None = None
    num_query: int = 0
    num_gallery: int = 0
    distributed_world_size: int = 1

    @property
    def mAP(self) -> float:
        return self.ranking.mAP

    @property
    def mINP(self) -> float:
        return self.ranking.mINP

    @property
    def cmc(self) -> np.ndarray:
        return self.ranking.cmc

    @property
    def rank1(self) -> float:
        return self.ranking.rank1

    @property
    def rank5(self) -> float:
        return self.ranking.rank5

    @property
    def rank10(self) -> float:
        return self.ranking.rank10

    def to_dict(self) -> dict[str, Any]:
        """{"ranking": {...}, "reranked": {...} or None, "verification": {...} or None, sizes}."""
        return {
            "ranking": self.ranking.to_dict(),
            "reranked": None if self.reranked is None else self.reranked.to_dict(),
            "verification": None if self.verification is None else self.verification.to_dict(),
            "num_query": self.num_query,
            "num_gallery": self.num_gallery,
            "distributed_world_size": self.distributed_world_size,
        }

    def summary(self) -> str:
        parts = [self.ranking.summary()]
        if self.reranked is not None:
            parts.append(self.reranked.summary(title="With k-reciprocal re-ranking"))
        if self.verification is not None:
            parts.append(self.verification.summary())
        return "\n".join(parts)

    __str__ = summary


def ranking_table(rows: Sequence[tuple[str, Any]]) -> str:
    """Markdown table of (name, result) rows, result any object with rank1/rank5/rank10/mAP/mINP (RankingResult,
    EvaluatorResult): percentages, "n/a" where a rank lies past the evaluated max_rank (NaN)."""
    def percent(value: float, width: int) -> str:
        return f"{'n/a':>{width}}" if math.isnan(value) else f"{value:{width}.1%}"

    width = max([len("ranking")] + [len(name) for name, _ in rows])
    lines = [f"| {'ranking':<{width}} | rank-1 | rank-5 | rank-10 |  mAP   |  mINP  |",
             f"|{'-' * (width + 2)}|-------:|-------:|--------:|-------:|-------:|"]
    for name, result in rows:
        values = [percent(v, w) for v, w in ((result.rank1, 6), (result.rank5, 6), (result.rank10, 7),
                                             (result.mAP, 6), (result.mINP, 6))]
        lines.append(f"| {name:<{width}} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def _is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def _all_gather_rows(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Concatenate every rank's (n_r, D) features and (n_r, 3) int64 labels in rank order (padded
    all_gather: any n_r, including 0). -> (features, labels, world size), on features' original device."""
    import torch.distributed as dist

    world_size = dist.get_world_size()
    nccl = dist.get_backend() == "nccl"
    comm_device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    header = torch.tensor(
        [features.shape[0], features.shape[1], int(features.dtype == torch.float64)], dtype=torch.int64, device=comm_device
    )
    headers = [torch.empty_like(header) for _ in range(world_size)]
    dist.all_gather(headers, header)
    sizes = [int(h[0]) for h in headers]
    dims = {int(h[1]) for h, n in zip(headers, sizes) if n > 0}
    if len(dims) > 1:
        raise ValueError(f"features: ranks hold different feature dimensions {sorted(dims)}; every rank must use one model")
    dim = dims.pop() if dims else features.shape[1]
    dtype = torch.float64 if any(int(h[2]) for h in headers) else torch.float32
    max_rows = max(sizes)

    def gather(local: torch.Tensor, width: int, gather_dtype: torch.dtype) -> torch.Tensor:
        padded = torch.zeros((max_rows, width), dtype=gather_dtype, device=comm_device)
        padded[: local.shape[0]] = local.to(device=comm_device, dtype=gather_dtype)
        pieces = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(pieces, padded)
        return torch.cat([piece[:n] for piece, n in zip(pieces, sizes)])

    local_features = features if features.shape[0] else features.new_zeros((0, dim))
    gathered_features = gather(local_features, dim, dtype).to(features.device)
    gathered_labels = gather(labels, 3, torch.int64).cpu()
    return gathered_features, gathered_labels, world_size


class ReIDEvaluator:
    """Accumulates (features, pids, camids, is_query) batches; compute() ranks queries against the gallery.

    Args:
        metric: "euclidean", "sqeuclidean" or "cosine" (reidfast.pairwise_distance).
        rerank: also evaluate k-reciprocal re-ranked distances (k1, k2, lambda_value; reidfast.re_ranking from
            the features for euclidean/cosine, O(N*k1 + Q*G) memory).
        max_rank, protocol ("market1501" | "cuhk03"), seed: as in reidfast.evaluate.
        device: where update() keeps the features ("cpu" frees GPU memory during evaluation; None keeps
            them on the device they come from, so distances are computed there).
        verification: also compute pair verification metrics (verification_threshold, max_verification_pairs
            as threshold and max_pairs of verification_metrics).
        distributed: gather all ranks' features in compute() when torch.distributed is initialised.
    """

    def __init__(
        self,
        metric: str = "euclidean",
        rerank: bool = False,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
        max_rank: int = 50,
        protocol: str = "market1501",
        device: str | torch.device | None = "cpu",
        *,
        seed: int | None = 0,
        verification: bool = False,
        verification_threshold: float | None = None,
        max_verification_pairs: int = DEFAULT_MAX_PAIRS,
        distributed: bool = True,
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}")
        if isinstance(max_rank, bool) or not isinstance(max_rank, numbers.Integral) or max_rank < 1:
            raise ValueError(f"max_rank: expected an integer >= 1, got {max_rank!r}")
        self.metric = metric
        self.rerank = bool(rerank)
        self.k1, self.k2, self.lambda_value = k1, k2, lambda_value
        self.max_rank = int(max_rank)
        self.protocol = protocol
        self.device = None if device is None else torch.device(device)
        self.seed = seed
        self.verification = bool(verification)
        self.verification_threshold = verification_threshold
        self.max_verification_pairs = max_verification_pairs
        self.distributed = distributed
        self.reset()

    def reset(self) -> None:
        """Forget every accumulated batch."""
        self._features: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []  # (n, 3) int64: pid, camid, is_query

    def __len__(self) -> int:
        """Rows accumulated on this process."""
        return sum(f.shape[0] for f in self._features)

    def update(self, features: Any, pids: Any, camids: Any, is_query: Any) -> None:
        """Add a batch: features (B, D) float (torch/numpy/cupy; detached), pids and camids (B,) integers,
        is_query a bool for the whole batch or a (B,) bool array (True = query, False = gallery)."""
        features_t, _ = as_tensor(features, "features")
        features_t = features_t.detach()
        if features_t.dim() != 2 or not features_t.is_floating_point():
            raise ValueError(f"features: expected a 2-D (batch, dim) float array, got shape {tuple(features_t.shape)} and dtype {features_t.dtype}")
        batch, dim = features_t.shape
        if self._features and dim != self._features[0].shape[1]:
            raise ValueError(f"features: expected {self._features[0].shape[1]} features per row like earlier batches, got {dim}")
        columns = [_labels_np(pids, "pids", batch), _labels_np(camids, "camids", batch)]
        if isinstance(is_query, (bool, np.bool_)):
            columns.append(np.full(batch, int(is_query), dtype=np.int64))
        else:
            query_mask, _ = as_tensor(is_query, "is_query")
            if query_mask.dim() != 1 or query_mask.shape[0] != batch or query_mask.dtype != torch.bool:
                raise ValueError(
                    f"is_query: expected a bool or a ({batch},) bool array, got shape {tuple(query_mask.shape)} "
                    f"and dtype {query_mask.dtype}"
                )
            columns.append(query_mask.cpu().numpy().astype(np.int64))
        if self.device is not None:
            features_t = features_t.to(self.device)
        self._features.append(features_t)
        self._labels.append(torch.from_numpy(np.stack(columns, axis=1)))

    def _local(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's rows: (features (n, D), labels (n, 3) int64: pid, camid, is_query)."""
        if self._features:
            features = torch.cat([f.to(self._features[0].device, torch.promote_types(f.dtype, self._features[0].dtype)) for f in self._features])
            return features, torch.cat(self._labels)
        return torch.zeros((0, 0), device=self.device or "cpu"), torch.zeros((0, 3), dtype=torch.int64)

    def _compute_sharded(self) -> EvaluatorResult:
        """Ranking only, in a distributed job: the queries are gathered, each rank keeps its gallery rows as
        its shard of evaluate_features(group=WORLD). No process holds the whole gallery or a Q x G matrix."""
        features, labels = self._local()
        is_query = labels[:, 2].bool()
        queries, query_labels, world_size = _all_gather_rows(features[is_query.to(features.device)], labels[is_query])
        gallery, gallery_labels = features[~is_query.to(features.device)], labels[~is_query]
        if gallery.shape[0] == 0:  # an empty shard still needs the feature dimension
            gallery = queries.new_zeros((0, queries.shape[1]))
        if queries.shape[0] == 0:
            raise ValueError("compute: needs at least one query sample; call update(..., is_query=...) with some")
        ranking = evaluate_features(
            queries, gallery.to(queries.device), query_labels[:, 0], gallery_labels[:, 0], query_labels[:, 1],
            gallery_labels[:, 1], self.metric, self.protocol, self.max_rank, group=torch.distributed.group.WORLD,
            seed=self.seed,
        )
        return EvaluatorResult(ranking, None, None, queries.shape[0], ranking.num_gallery, world_size)

    def _collected(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        features, labels = self._local()
        world_size = 1
        if self.distributed and _is_distributed():
            features, labels, world_size = _all_gather_rows(features, labels)
        return features, labels, world_size

    def compute(self, rerank: bool | None = None, verification: bool | None = None) -> EvaluatorResult:
        """Rank every query against the gallery -> EvaluatorResult (ranking; reranked when rerank, default
        the constructor's; verification when verification, default the constructor's). In a distributed job
        without re-ranking and verification, the gallery stays sharded over the ranks (_compute_sharded)."""
        rerank = self.rerank if rerank is None else rerank
        verification = self.verification if verification is None else verification
        if self.distributed and _is_distributed() and not rerank and not verification:
            return self._compute_sharded()
        features, labels, world_size = self._collected()
        is_query = labels[:, 2].bool()
        num_query, num_gallery = int(is_query.sum()), int((~is_query).sum())
        if num_query == 0 or num_gallery == 0:
            raise ValueError(
                f"compute: needs at least one query and one gallery sample, got {num_query} queries and "
                f"{num_gallery} gallery samples; call update(..., is_query=...) with both"
            )
        query_features, gallery_features = features[is_query.to(features.device)], features[~is_query.to(features.device)]
        q_pids, q_camids = labels[is_query, 0], labels[is_query, 1]
        g_pids, g_camids = labels[~is_query, 0], labels[~is_query, 1]
        if verification or (rerank and self.metric not in ("euclidean", "cosine")):
            distmat = pairwise_distance(query_features, gallery_features, metric=self.metric)
            ranking = evaluate(distmat, q_pids, g_pids, q_camids, g_camids, self.max_rank, self.protocol, self.seed)
        else:  # the same numbers without the Q x G matrix (large galleries)
            ranking = evaluate_features(query_features, gallery_features, q_pids, g_pids, q_camids, g_camids,
                                        self.metric, self.protocol, self.max_rank, seed=self.seed)

        reranked = None
        if rerank:
            from .ops.rerank import re_ranking, re_ranking_distances

            if self.metric in ("euclidean", "cosine"):  # from features: no (Q+G)^2 matrix at all
                reranked_distmat = re_ranking(query_features, gallery_features, k1=self.k1, k2=self.k2,
                                              lambda_value=self.lambda_value, metric=self.metric)
            else:
                q_q = pairwise_distance(query_features, metric=self.metric)
                g_g = pairwise_distance(gallery_features, metric=self.metric)
                reranked_distmat = re_ranking_distances(distmat, q_q, g_g, k1=self.k1, k2=self.k2,
                                                        lambda_value=self.lambda_value)
                del q_q, g_g
            reranked = evaluate(reranked_distmat, q_pids, g_pids, q_camids, g_camids, self.max_rank, self.protocol, self.seed)

        verification_result = None
        if verification:
            verification_result = verification_metrics(
                distmat, q_pids, g_pids, q_camids, g_camids, self.verification_threshold,
                max_pairs=self.max_verification_pairs, seed=self.seed,
            )
        return EvaluatorResult(ranking, reranked, verification_result, num_query, num_gallery, world_size)
