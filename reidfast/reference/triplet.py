"""Plain torch batch-hard triplet loss: the ground truth for every triplet backend.

Semantics (shared/DESIGN.md, Hermans et al. 2017, reid-strong-baseline ``TripletLoss``):

For anchor i (a row of ``embeddings``) and candidate j (a row of ``candidates``, which default to the
embeddings themselves):

* positives of i: candidates with ``candidate_labels[j] == labels[i]`` and ``j != anchor_index[i]``;
  negatives of i: candidates with a different label.
  ``anchor_index[i]`` is the column of the anchor itself in the candidates (-1: not among them); a present
  anchor must carry its own label there (ValueError otherwise), so self is never a negative. With
  ``candidates=None`` it defaults to ``arange(B)`` (self excluded); with explicit candidates it defaults
  to all -1 (no exclusion), since a row of the candidates cannot be recognised as "self" by value.
* hardest positive = argmax of the distance over the positives, hardest negative = argmin over the
  negatives. **Ties: the smallest candidate index wins** (native kernels must follow this rule).
* an anchor is valid when it has at least one positive and at least one negative; invalid anchors are
  left out of the reduction (their ``loss_per_anchor`` is 0).
* loss_i = relu(d_ap - d_an + margin), or softplus(d_ap - d_an) for ``margin="soft"``
  (= reid-strong-baseline's SoftMarginLoss(d_an - d_ap, y=1)).
* reduction "mean" = sum over valid anchors / num_valid, "sum", "none" -> (B,). A batch without a valid
  anchor gives 0 (still attached to the graph: backward works and yields a zero gradient).
* ``normalize=True`` L2-normalises anchors and candidates first (F.normalize, eps 1e-12).
* computed in float32, or float64 when an input is float64 (half inputs are upcast first).

The gradient flows through the two selected distances of each valid anchor only (autograd on the full
B x C distance matrix; materialising it is fine for a reference).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reidfast._checks import NO_INDEX, SOFT_MARGIN, validate_triplet_arguments
from reidfast.reference.distance import accumulation_dtype, pairwise_distance

NORMALIZE_EPS = 1e-12


@dataclass
class TripletDetails:
    """Per-anchor results of the mining, all detached from the graph.

    loss_per_anchor:   (B,) float, 0 for invalid anchors.
    dist_ap, dist_an:  (B,) float, distance to the hardest positive / negative (0 where there is none).
    hardest_positive:  (B,) int64 column in the candidates, -1 when the anchor has no positive.
    hardest_negative:  (B,) int64 column in the candidates, -1 when the anchor has no negative.
    valid:             (B,) bool, the anchor has at least one positive and one negative.
    num_valid:         number of valid anchors.
    fraction_active:   fraction of valid anchors whose term is non-zero, i.e. d_ap - d_an + margin > 0;
                       with the soft margin every valid anchor counts as active (softplus > 0 always).
                       0.0 when no anchor is valid.
    """

    loss_per_anchor: torch.Tensor
    dist_ap: torch.Tensor
    dist_an: torch.Tensor
    hardest_positive: torch.Tensor
    hardest_negative: torch.Tensor
    valid: torch.Tensor
    num_valid: int
    fraction_active: float


def _first_extreme_index(distances: torch.Tensor, mask: torch.Tensor, largest: bool) -> torch.Tensor:
    """Per row of distances (B, C), the smallest column index holding the max (largest=True) or min of
    the entries where mask (B, C) is True -> (B,) int64, -1 for rows without such an entry."""
    num_rows, num_columns = distances.shape
    if num_columns == 0:
        return torch.full((num_rows,), NO_INDEX, dtype=torch.int64, device=distances.device)
    fill = -math.inf if largest else math.inf
    masked = distances.masked_fill(~mask, fill)
    extreme = masked.amax(dim=1) if largest else masked.amin(dim=1)
    columns = torch.arange(num_columns, device=distances.device).expand(num_rows, num_columns)
    # amax/argmax do not promise which of several equal extremes they return on every device; this does.
    is_extreme = mask & (distances == extreme[:, None])
    first = torch.where(is_extreme, columns, num_columns).amin(dim=1)
    return torch.where(mask.any(dim=1), first, NO_INDEX)


def hardest_pairs(
    distances: torch.Tensor, labels: torch.Tensor, candidate_labels: torch.Tensor, anchor_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hardest_positive, hardest_negative) column per anchor of distances (B, C): (B,) int64 each, -1 if none."""
    same_label = labels[:, None] == candidate_labels[None, :]
    columns = torch.arange(distances.shape[1], device=distances.device)
    is_positive = same_label & (columns[None, :] != anchor_index[:, None])
    # The anchor's own column carries its label (validate_triplet_arguments checks it), so it is never a negative.
    return (_first_extreme_index(distances, is_positive, largest=True),
            _first_extreme_index(distances, ~same_label, largest=False))


def batch_hard_triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float | str = 0.3,
    metric: str = "euclidean",
    normalize: bool = False,
    reduction: str = "mean",
    candidates: torch.Tensor | None = None,
    candidate_labels: torch.Tensor | None = None,
    anchor_index: torch.Tensor | None = None,
    return_details: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, TripletDetails]:
    """Batch-hard triplet loss of anchors embeddings (B, D) with labels (B,) against candidates (C, D)
    with candidate_labels (C,) (default: the batch itself, self excluded).

    anchor_index (B,) int: each anchor's own column in the candidates (-1 = not present), excluded from its
    positives; default arange(B) without candidates, no exclusion with candidates.
    margin: a non-negative number, or "soft" for softplus(d_ap - d_an).
    Returns a scalar (reduction mean|sum) or (B,) (none), float32 (float64 if an input is float64);
    with return_details=True, (loss, TripletDetails).
    """
    candidates, candidate_labels, anchor_index, _ = validate_triplet_arguments(
        embeddings, labels, margin, metric, reduction, candidates, candidate_labels, anchor_index
    )
    num_candidates = candidates.shape[0]

    dtype = accumulation_dtype(torch.promote_types(embeddings.dtype, candidates.dtype))
    anchors, others = embeddings.to(dtype), candidates.to(dtype)
    if normalize:
        anchors = F.normalize(anchors, dim=1, eps=NORMALIZE_EPS)
        others = F.normalize(others, dim=1, eps=NORMALIZE_EPS)
    distances = pairwise_distance(anchors, others, metric=metric)  # (B, C)

    with torch.no_grad():
        hardest_positive, hardest_negative = hardest_pairs(distances, labels, candidate_labels, anchor_index)
    valid = (hardest_positive >= 0) & (hardest_negative >= 0)

    if num_candidates == 0:
        # Nothing to gather from; keep the result attached to the graph of the embeddings.
        dist_ap = dist_an = (anchors * 0).sum(dim=1)
    else:
        dist_ap = distances.gather(1, hardest_positive.clamp_min(0)[:, None]).squeeze(1)
        dist_an = distances.gather(1, hardest_negative.clamp_min(0)[:, None]).squeeze(1)
    if margin == SOFT_MARGIN:
        terms = F.softplus(dist_ap - dist_an)
        active = valid
    else:
        terms = F.relu(dist_ap - dist_an + margin)
        active = valid & (dist_ap - dist_an + margin > 0)
    # where() passes a zero gradient to the unselected (invalid) terms, so those anchors get none.
    loss_per_anchor = torch.where(valid, terms, torch.zeros_like(terms))

    num_valid = int(valid.sum())
    if reduction == "none":
        loss = loss_per_anchor
    elif reduction == "sum":
        loss = loss_per_anchor.sum()
    else:
        loss = loss_per_anchor.sum() / max(num_valid, 1)

    if not return_details:
        return loss
    details = TripletDetails(
        loss_per_anchor=loss_per_anchor.detach(),
        dist_ap=torch.where(hardest_positive >= 0, dist_ap.detach(), 0.0),
        dist_an=torch.where(hardest_negative >= 0, dist_an.detach(), 0.0),
        hardest_positive=hardest_positive,
        hardest_negative=hardest_negative,
        valid=valid,
        num_valid=num_valid,
        fraction_active=float(active.sum()) / num_valid if num_valid else 0.0,
    )
    return loss, details
