"""pytorch-metric-learning's batch-hard miner and triplet margin loss on reidfast's fused mining kernel.

    from reidfast.integrations import pml as rfpml
    miner = rfpml.BatchHardMiner()                              # was miners.BatchHardMiner()
    loss = losses.TripletMarginLoss(margin=0.2)(emb, labels, miner(emb, labels))  # PML's loss, unchanged
    loss = rfpml.BatchHardTripletMarginLoss(margin=0.2)(emb, labels)             # or both fused in one op

Equal to pytorch-metric-learning 2.x (miner indices; loss value and gradient), including its tie rule on the
CPU (the smallest index among equal distances) and its `ref_emb`/`ref_labels` convention: the anchor itself is
excluded from its positives only when ref_labels is labels (the default, no ref_emb), by position.

Supported options (others raise ValueError naming the argument):
    distance: None (PML's default LpDistance(normalize_embeddings=True)), LpDistance(p=2, power=1 or 2,
              normalize_embeddings=True or False), CosineSimilarity() (power 1);
    reducer:  None (PML's default AvgNonZeroReducer), AvgNonZeroReducer, ThresholdReducer(low, high),
              MeanReducer, SumReducer;
    loss:     margin >= 0, smooth_loss only with margin 0 (softplus(d_ap - d_an)), swap=False.
pytorch-metric-learning is imported only to recognise a distance or reducer object passed in.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..ops.triplet import batch_hard_triplet_loss

__all__ = ["BatchHardMiner", "BatchHardTripletMarginLoss"]


def _distance_options(distance: Any) -> tuple[str, bool]:
    """A PML distance object -> (reidfast metric, normalize)."""
    if distance is None:
        return "euclidean", True
    from pytorch_metric_learning import distances

    kind = type(distance)
    if kind is distances.LpDistance and distance.p == 2 and distance.power in (1, 2):
        return ("euclidean" if distance.power == 1 else "sqeuclidean"), bool(distance.normalize_embeddings)
    if kind is distances.CosineSimilarity and distance.power == 1:
        return "cosine", False  # reidfast's cosine distance normalises: 1 - similarity
    raise ValueError(
        "distance: expected None, LpDistance(p=2, power=1 or 2) or CosineSimilarity(), got "
        f"{kind.__name__}(p={getattr(distance, 'p', None)}, power={getattr(distance, 'power', None)})"
    )


def _reducer_options(reducer: Any) -> tuple[str, float | None, float | None]:
    """A PML reducer -> ("threshold", low, high) | ("mean", None, None) | ("sum", None, None)."""
    if reducer is None:
        return "threshold", 0.0, None
    from pytorch_metric_learning import reducers

    kind = type(reducer)
    if kind in (reducers.AvgNonZeroReducer, reducers.ThresholdReducer):
        return "threshold", reducer.low, reducer.high
    if kind is reducers.MeanReducer:
        return "mean", None, None
    if kind is reducers.SumReducer:
        return "sum", None, None
    raise ValueError(
        f"reducer: expected None, AvgNonZeroReducer, ThresholdReducer, MeanReducer or SumReducer, got {kind.__name__}"
    )


def _mine(embeddings, labels, ref_emb, ref_labels, metric, normalize, margin, reduction="none"):
    """reidfast's batch-hard op with PML's reference-set convention -> (loss, TripletDetails)."""
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
        raise ValueError(f"embeddings: expected a 2-D (batch_size, embedding_size) tensor, got {getattr(embeddings, 'shape', type(embeddings))}")
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels: expected a (batch_size,) integer tensor, got {type(labels).__name__}")
    labels_on_device = labels.to(embeddings.device)
    if ref_emb is None:
        candidates = candidate_labels = anchor_index = None
    else:
        if ref_labels is None:
            raise ValueError("ref_labels: expected the labels of ref_emb, got None")
        candidates = ref_emb
        candidate_labels = labels_on_device if ref_labels is labels else ref_labels.to(ref_emb.device)
        # PML leaves the diagonal out only when ref_labels *is* labels (then ref_emb has the batch's length).
        anchor_index = torch.arange(len(labels), device=embeddings.device) if ref_labels is labels else None
    return batch_hard_triplet_loss(
        embeddings, labels_on_device, margin=margin, metric=metric, normalize=normalize, reduction=reduction,
        candidates=candidates, candidate_labels=candidate_labels, anchor_index=anchor_index, return_details=True,
    )


class BatchHardMiner(nn.Module):
    """PML's ``miners.BatchHardMiner`` interface on the fused kernel: no B x C matrix.

    miner(embeddings (B, D), labels (B,), ref_emb=None (C, D), ref_labels=None (C,)) -> (anchors, positives,
    negatives) int64 index tensors: one triplet per anchor that has a positive and a negative, the positive
    the farthest (least similar), the negative the closest (most similar), indices into ref_emb when given.
    """

    def __init__(self, distance: Any = None) -> None:
        super().__init__()
        self.distance = distance
        self._metric, self._normalize = _distance_options(distance)

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None):
        with torch.no_grad():
            _, details = _mine(embeddings.detach(), labels, None if ref_emb is None else ref_emb.detach(),
                               ref_labels, self._metric, self._normalize, margin=0.0)
        anchors = torch.nonzero(details.valid).squeeze(1)
        return anchors, details.hardest_positive[anchors], details.hardest_negative[anchors]


class BatchHardTripletMarginLoss(nn.Module):
    """PML's ``TripletMarginLoss(margin)`` fed by its ``BatchHardMiner``, as one fused op: same value and gradient.

    loss(embeddings (B, D), labels (B,), indices_tuple=None, ref_emb=None, ref_labels=None) -> scalar. The
    default reducer averages the non-zero triplet losses (AvgNonZeroReducer); see the module docstring for the
    supported distance and reducer options.
    """

    def __init__(self, margin=0.05, swap=False, smooth_loss=False, distance=None, reducer=None) -> None:
        super().__init__()
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
            raise ValueError(f"margin: expected a finite number >= 0, got {margin!r}")
        if swap:
            raise ValueError("swap: expected False (the anchor-negative / positive-negative swap is not supported), got True")
        if smooth_loss and margin != 0:
            raise ValueError(f"smooth_loss: supported only with margin=0 (softplus(d_ap - d_an)), got margin={margin!r}")
        self.margin, self.swap, self.smooth_loss = margin, swap, smooth_loss
        self.distance, self.reducer = distance, reducer
        self._metric, self._normalize = _distance_options(distance)
        self._reduction, self._low, self._high = _reducer_options(reducer)

    def forward(self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None):
        if indices_tuple is not None:
            raise ValueError("indices_tuple: expected None (this loss mines its own batch-hard triplets), got a tuple")
        margin = "soft" if self.smooth_loss else self.margin
        if self._reduction != "threshold":
            loss, _ = _mine(embeddings, labels, ref_emb, ref_labels, self._metric, self._normalize, margin, self._reduction)
            return loss
        per_anchor, details = _mine(embeddings, labels, ref_emb, ref_labels, self._metric, self._normalize, margin)
        kept = details.valid
        if self._low is not None:
            kept = kept & (per_anchor > self._low)
        if self._high is not None:
            kept = kept & (per_anchor < self._high)
        kept_losses = torch.where(kept, per_anchor, torch.zeros_like(per_anchor))
        return kept_losses.sum() / kept.sum().clamp_min(1).to(kept_losses.dtype)
