"""torchreid's (KaiyangZhou/deep-person-reid) evaluation, re-ranking, distance and triplet functions on reidfast.

    from reidfast.integrations import torchreid as rft
    cmc, mAP = rft.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)  # was torchreid.metrics.evaluate_rank
    handle = rft.patch()   # or: swap them inside an installed torchreid (engine included); handle.undo()

Same signatures, defaults and return types as torchreid 1.4 (`torchreid.metrics.rank`, `torchreid.utils.rerank`,
`torchreid.metrics.distance`, `torchreid.losses.hard_mine_triplet_loss`). Where the numbers can differ:

* ties in a distance row: torchreid ranks them in np.argsort's (unstable) order, reidfast by gallery index;
* use_metric_cuhk03: torchreid draws one image per identity with numpy's global generator, reidfast with its
  own seeded draws (the seed is taken from numpy's global generator): same distribution, other draws. The
  mAP does not depend on the draws and is equal;
* a query whose kept gallery row is shorter than max_rank: torchreid's python code fails on the ragged
  array (numpy >= 1.24); reidfast pads that query's CMC with 1;
* compute_distance_matrix("euclidean"): the squared distance is clamped at 0 here; torchreid's can come out
  slightly negative through rounding (a row against itself);
* TripletLoss: an anchor without another positive scores its distance to itself, which torchreid computes
  with rounding noise (0 up to sqrt(ulp(|x|^2))) and reidfast as exactly sqrt(1e-12).
torchreid itself is not needed, except by patch().
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..ops.distance import pairwise_distance
from ..ops.rerank import re_ranking_distances
from ._common import PatchHandle, as_numpy_result, evaluate_quietly, open_reid_batch_hard_terms, patch_attributes

__all__ = ["TripletLoss", "compute_distance_matrix", "evaluate_rank", "patch", "re_ranking"]

_METRICS = {"euclidean": "sqeuclidean", "cosine": "cosine"}  # torchreid's "euclidean" is the squared distance


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, use_metric_cuhk03=False, use_cython=True):
    """CMC and mAP of a (Q, G) distance matrix, torchreid's ``metrics.evaluate_rank``.

    distmat: numpy (float32/float64) or torch (Q, G); pids/camids (Q,)/(G,). use_cython is accepted and
    ignored (reidfast's native evaluator runs either way). Returns (cmc float32 ndarray (max_rank,), mAP
    np.float64), max_rank cut to the gallery size as torchreid does.
    """
    result = evaluate_quietly(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, use_metric_cuhk03)
    return result.cmc.copy(), np.float64(result.mAP)


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """k-reciprocal re-ranking (Zhong et al. 2017), torchreid's ``utils.re_ranking``: (Q, G) float32 numpy.

    The inputs are squared inside, as in torchreid; numpy or torch (CPU) arrays, any mix of them.
    """
    return as_numpy_result(re_ranking_distances(q_g_dist, q_q_dist, g_g_dist, k1=k1, k2=k2, lambda_value=lambda_value))


def compute_distance_matrix(input1, input2, metric="euclidean"):
    """(M, D), (N, D) torch tensors -> (M, N) tensor, torchreid's ``metrics.compute_distance_matrix``.

    metric "euclidean" returns the *squared* Euclidean distance (as torchreid does), "cosine" 1 - cos.
    Differentiable.
    """
    for name, value in (("input1", input1), ("input2", input2)):
        if not isinstance(value, torch.Tensor) or value.dim() != 2:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name}: expected a 2-D torch.Tensor, got {shape}")
    if input1.shape[1] != input2.shape[1]:
        raise ValueError(f"input2: expected {input1.shape[1]} features per row like input1, got {input2.shape[1]}")
    if metric not in _METRICS:
        raise ValueError(f'Unknown distance metric: {metric}. Please choose either "euclidean" or "cosine"')
    return pairwise_distance(input1, input2, metric=_METRICS[metric])


class TripletLoss(nn.Module):
    """Batch-hard triplet loss with torchreid's ``losses.TripletLoss(margin=0.3)`` rule, on the fused kernel.

    forward(inputs (B, D), targets (B,)) -> scalar: mean over all B anchors of
    relu(d_ap - d_an + margin), Euclidean distances, the hardest positive chosen among the anchor's label
    including itself. Every anchor needs a negative, so the batch needs two identities (torchreid fails too).
    """

    def __init__(self, margin=0.3):
        super().__init__()
        self.margin = margin

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if isinstance(targets, torch.Tensor) and targets.dim() == 1 and targets.numel() and bool((targets == targets[0]).all()):
            raise ValueError("targets: expected at least two identities in the batch (each anchor needs a negative), got one")
        terms, _ = open_reid_batch_hard_terms(inputs, targets, self.margin)
        return terms.sum() / inputs.shape[0]


def _targets() -> tuple[list[tuple[str, str, Any]], list[tuple[str, str, Any]]]:
    """(definitions, consumers) for both layouts: deep-person-reid (torchreid.metrics, ...) and the PyPI
    packaging torchreid 0.2.x (torchreid.reid.metrics, ...)."""
    definitions, consumers = [], []
    for prefix in ("torchreid", "torchreid.reid"):
        definitions += [
            (f"{prefix}.metrics", "evaluate_rank", evaluate_rank),
            (f"{prefix}.metrics.rank", "evaluate_rank", evaluate_rank),
            (f"{prefix}.metrics", "compute_distance_matrix", compute_distance_matrix),
            (f"{prefix}.metrics.distance", "compute_distance_matrix", compute_distance_matrix),
            (f"{prefix}.utils", "re_ranking", re_ranking),
            (f"{prefix}.utils.rerank", "re_ranking", re_ranking),
            (f"{prefix}.losses", "TripletLoss", TripletLoss),
            (f"{prefix}.losses.hard_mine_triplet_loss", "TripletLoss", TripletLoss),
        ]
        consumers += [(f"{prefix}.engine.engine", "re_ranking", re_ranking)]
    return definitions, consumers


def patch() -> PatchHandle:
    """Replace evaluate_rank, re_ranking, compute_distance_matrix and TripletLoss inside the installed
    torchreid (both its module layouts; the engine's own `re_ranking` name too) -> PatchHandle; .undo()
    restores them (also usable as a context manager). ImportError when torchreid does not import."""
    return patch_attributes("torchreid", *_targets())
