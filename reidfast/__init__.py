"""reidfast: fast person re-identification kernels behind a small PyTorch-friendly API.

    import reidfast as rf
    d = rf.pairwise_distance(x, y, metric="euclidean")   # (N, D), (M, D) -> (N, M)
    vals, idx = rf.topk_distance(x, y, k=20)             # k nearest per row, blockwise, O(N*k) memory
    loss = rf.batch_hard_triplet_loss(emb, labels)       # fused mining + loss, no B x B matrix
    print(rf.backends())                                 # what is built and usable, and why not
    with rf.use_backend("reference"): ...                # force one backend
"""
from __future__ import annotations

from ._dispatch import BackendInfo, BackendUnavailableError, backends, use_backend
from ._native import build_info
from .losses import BatchHardTripletLoss, CrossEntropyLabelSmooth
from .ops.distance import pairwise_distance
from .ops.topk import topk_distance
from .ops.triplet import batch_hard_triplet_loss

__version__ = "0.1.0"

__all__ = [
    "BackendInfo",
    "BackendUnavailableError",
    "BatchHardTripletLoss",
    "CrossEntropyLabelSmooth",
    "__version__",
    "backends",
    "batch_hard_triplet_loss",
    "build_info",
    "pairwise_distance",
    "topk_distance",
    "use_backend",
]
