"""fast-reid 1.4.0's (the `fastreid` release on PyPI) evaluate_rank, re_ranking and triplet_loss on reidfast.

    from reidfast.integrations import fastreid as rff
    cmc, all_AP, all_INP = rff.evaluate_rank(dist, q_pids, g_pids, q_camids, g_camids)
    handle = rff.patch()   # or: swap them inside an installed fastreid; handle.undo()

Same signatures, defaults and return types as fast-reid 1.4.0 (`fastreid.evaluation.rank`,
`fastreid.evaluation.rerank`, `fastreid.modeling.losses.triplet_loss`). Where fast-reid differs from
torchreid, this follows fast-reid:

* evaluate_rank (Market-1501) returns per-query lists ``(cmc, all_AP, all_INP)`` (np.float64 entries, one per
  valid query, as its python path does; its Cython path returns float32 arrays), not ``(cmc, mAP)``; mINP is
  the mean of all_INP, INP = matches / rank of the last match (Ye et al. 2021). use_metric_cuhk03=True returns
  ``(cmc, mAP)`` as fast-reid's does (no INP), with reidfast's seeded draws instead of numpy's global generator;
* triplet_loss: the mean runs over all anchors; the hardest positive may be the anchor itself; an anchor
  without a negative contributes 0 (fast-reid's 1e9 mask), not an error as in torchreid; norm_feat uses
  fast-reid's cosine distance 2 - 2 cos (twice torchreid's); margin <= 0 is the soft margin, falling back to
  margin 0.3 when fast-reid's soft margin loss overflows to inf.
Ties in a distance row are ranked by gallery index here, in np.argsort's unstable order in fast-reid (as in
torchreid). fast-reid itself is not needed, except by patch().
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..ops.distance import pairwise_distance
from ._common import PatchHandle, evaluate_quietly, open_reid_batch_hard_terms, patch_attributes
from .torchreid import re_ranking  # fast-reid's evaluation/rerank.py is torchreid's function, same signature

__all__ = ["evaluate_rank", "patch", "re_ranking", "triplet_loss"]

_SOFT_MARGIN_FALLBACK = 0.3  # fast-reid's margin when its soft margin loss is inf


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, use_metric_cuhk03=False, use_cython=True):
    """fast-reid 1.4.0's ``evaluation.rank.evaluate_rank``.

    Market-1501 -> (cmc float32 ndarray (max_rank,), all_AP, all_INP): lists of np.float64, one per query with
    a valid match, in query order. use_metric_cuhk03=True -> (cmc, mAP np.float64). distmat: numpy or torch
    (Q, G); use_cython is accepted and ignored.
    """
    if use_metric_cuhk03:
        result = evaluate_quietly(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, True)
        return result.cmc.copy(), np.float64(result.mAP)
    cmc, average_precision, inverse_negative_penalty = _market1501_per_query(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    return cmc, list(average_precision), list(inverse_negative_penalty)


def _market1501_per_query(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """-> (cmc, AP (V,), INP (V,)) float64 over the V valid queries (rf.evaluate's per-query results)."""
    result = evaluate_quietly(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, False)
    return result.cmc.copy(), result.average_precision, result.inverse_negative_penalty


def _weighted_mining(dist_mat: torch.Tensor, is_pos: torch.Tensor, is_neg: torch.Tensor):
    """fast-reid's weighted_example_mining (softmax-weighted positives and negatives), on a full (B, B) matrix."""
    def softmax_weights(dist, mask):
        max_v = torch.max(dist * mask, dim=1, keepdim=True)[0]
        diff = dist - max_v
        normaliser = torch.sum(torch.exp(diff) * mask, dim=1, keepdim=True) + 1e-6
        return torch.exp(diff) * mask / normaliser

    dist_ap, dist_an = dist_mat * is_pos, dist_mat * is_neg
    return (torch.sum(dist_ap * softmax_weights(dist_ap, is_pos), dim=1),
            torch.sum(dist_an * softmax_weights(-dist_an, is_neg), dim=1))


def _weighted_triplet_loss(embedding, targets, margin, norm_feat):
    """hard_mining=False: no batch-hard selection to fuse; reidfast's distance matrix, fast-reid's weighting."""
    dist_mat = 2.0 * pairwise_distance(embedding, metric="cosine") if norm_feat else pairwise_distance(embedding)
    same = targets[:, None] == targets[None, :]
    dist_ap, dist_an = _weighted_mining(dist_mat, same.to(dist_mat.dtype), (~same).to(dist_mat.dtype))
    target = torch.ones_like(dist_an)
    if margin > 0:
        return F.margin_ranking_loss(dist_an, dist_ap, target, margin=margin)
    loss = F.soft_margin_loss(dist_an - dist_ap, target)
    if loss == float("inf"):
        loss = F.margin_ranking_loss(dist_an, dist_ap, target, margin=_SOFT_MARGIN_FALLBACK)
    return loss


def triplet_loss(embedding, targets, margin, norm_feat, hard_mining):
    """fast-reid 1.4.0's ``modeling.losses.triplet_loss``: a scalar, the mean over the B anchors.

    embedding (B, D), targets (B,) integer. norm_feat: distance 2 - 2 cos (else Euclidean); hard_mining: the
    batch-hard pair (fused kernel; else fast-reid's softmax-weighted mining); margin <= 0: soft margin.
    """
    if not hard_mining:
        return _weighted_triplet_loss(embedding, targets, margin, norm_feat)
    # norm_feat: |x^ - y^|^2 = 2 - 2 cos, fast-reid's cosine_dist, with its F.normalize.
    metric, normalize = ("sqeuclidean", True) if norm_feat else ("euclidean", False)
    terms, details = open_reid_batch_hard_terms(embedding, targets, margin if margin > 0 else "soft", metric, normalize)
    if margin <= 0:
        # fast-reid's soft_margin_loss is log(1 + exp(d_ap - d_an)): inf once exp overflows in the input's dtype.
        gap = (details.dist_ap - details.dist_an)[details.hardest_negative >= 0]
        if bool(torch.isinf(torch.exp(gap.to(terms.dtype))).any()):
            terms, _ = open_reid_batch_hard_terms(embedding, targets, _SOFT_MARGIN_FALLBACK, metric, normalize)
    return terms.sum() / embedding.shape[0]


def _targets():
    definitions = [
        ("fastreid.evaluation.rank", "evaluate_rank", evaluate_rank),
        ("fastreid.evaluation.rerank", "re_ranking", re_ranking),
        ("fastreid.modeling.losses.triplet_loss", "triplet_loss", triplet_loss),
        ("fastreid.modeling.losses", "triplet_loss", triplet_loss),
    ]
    # The meta-architectures bind triplet_loss at import (`from fastreid.modeling.losses import *`).
    consumers = [(f"fastreid.modeling.meta_arch.{name}", "triplet_loss", triplet_loss) for name in ("baseline", "mgn")]
    return definitions, consumers


def patch() -> PatchHandle:
    """Replace evaluate_rank, re_ranking and triplet_loss inside the installed fastreid (its evaluator imports
    evaluate_rank at call time, so it picks the replacement up) -> PatchHandle; .undo() restores them (also a
    context manager). ImportError when fastreid does not import (1.4.0 pins torch 1.13 and needs Python < 3.10
    for `fastreid.evaluation`)."""
    return patch_attributes("fastreid", *_targets())
