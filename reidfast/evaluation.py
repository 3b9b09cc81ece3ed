"""ReIDEvaluator: accumulate features batch by batch, then CMC/mAP/mINP, re-ranking and verification metrics
(reidfast/verification.py; VerificationResult and verification_metrics are re-exported here).

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
from .ops.distance import pairwise_distance
from .ops.evaluate_features import evaluate_features
from .ops.evaluation import PROTOCOLS, RankingResult, evaluate
from .reference.distance import METRICS
from .verification import DEFAULT_MAX_PAIRS, VerificationResult, _labels_np, verification_metrics

__all__ = ["EvaluatorResult", "ReIDEvaluator", "VerificationResult", "ranking_table", "verification_metrics"]


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
