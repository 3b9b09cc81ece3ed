"""reidfast: fast person re-identification kernels behind a small PyTorch-friendly API.

    import reidfast as rf
    d = rf.pairwise_distance(x, y, metric="euclidean")   # (N, D), (M, D) -> (N, M)
    vals, idx = rf.topk_distance(x, y, k=20)             # k nearest per row, blockwise, O(N*k) memory
    loss = rf.batch_hard_triplet_loss(emb, labels)       # fused mining + loss, no B x B matrix
    print(rf.backends())                                 # what is built and usable, and why not
    res = rf.evaluate(distmat, q_pids, g_pids, q_camids, g_camids)  # .cmc .mAP .mINP .summary()
    with rf.use_backend("reference"): ...                # force one backend
"""
from __future__ import annotations

from ._dispatch import BackendInfo, BackendUnavailableError, backends, use_backend
from ._native import build_info
from .evaluation import EvaluatorResult, ReIDEvaluator
from .losses import BatchHardTripletLoss, CrossEntropyLabelSmooth
from .ops.distance import pairwise_distance
from .ops.evaluate_features import evaluate_features
from .ops.evaluation import RankingResult, evaluate
from .ops.rerank import re_ranking, re_ranking_distances
from .ops.topk import topk_distance
from .ops.triplet import batch_hard_triplet_loss
from .verification import VerificationResult, verification_metrics

__version__ = "0.1.0"

__all__ = [
    "BackendInfo",
    "BackendUnavailableError",
    "BatchHardTripletLoss",
    "CrossEntropyLabelSmooth",
    "EvaluatorResult",
    "RankingResult",
    "ReIDEvaluator",
    "VerificationResult",
    "__version__",
    "backends",
    "batch_hard_triplet_loss",
    "build_info",
    "evaluate",
    "evaluate_features",
    "pairwise_distance",
    "re_ranking",
    "re_ranking_distances",
    "topk_distance",
    "use_backend",
    "verification_metrics",
]
