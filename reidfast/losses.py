"""nn.Module losses for re-ID training: the fused batch-hard triplet loss and BoT-style label smoothing."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .ops.triplet import batch_hard_triplet_loss


class BatchHardTripletLoss(nn.Module):
    """Drop-in batch-hard triplet loss (reid-strong-baseline `TripletLoss` semantics, fused kernels).

        criterion = BatchHardTripletLoss(margin=0.3)      # or margin="soft"
        loss = criterion(embeddings, labels)              # (B, D), (B,) -> scalar

    gather_distributed=True: each rank's anchors are scored against the embeddings of all ranks, gathered
    with gradients (torch.distributed.nn.all_gather), so hard positives/negatives come from the global batch.
    Each rank's loss covers its own anchors; with DDP's gradient averaging this trains like one big batch.
    Ranks may hold different batch sizes. See `reidfast.batch_hard_triplet_loss` for the other arguments.
    """

    def __init__(self, margin: float | str = 0.3, metric: str = "euclidean", normalize: bool = False,
                 reduction: str = "mean", gather_distributed: bool = False) -> None:
        super().__init__()
        self.margin, self.metric, self.normalize, self.reduction = margin, metric, normalize, reduction
        self.gather_distributed = gather_distributed

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, return_details: bool = False):
        if not (self.gather_distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return batch_hard_triplet_loss(embeddings, labels, self.margin, self.metric, self.normalize,
                                           self.reduction, return_details=return_details)
        candidates, candidate_labels, offset = gather_with_gradients(embeddings, labels)
        anchor_index = offset + torch.arange(embeddings.shape[0], device=embeddings.device)
        return batch_hard_triplet_loss(embeddings, labels, self.margin, self.metric, self.normalize, self.reduction,
                                       candidates=candidates, candidate_labels=candidate_labels,
                                       anchor_index=anchor_index, return_details=return_details)

    def extra_repr(self) -> str:
        return (f"margin={self.margin!r}, metric={self.metric!r}, normalize={self.normalize}, "
                f"reduction={self.reduction!r}, gather_distributed={self.gather_distributed}")


def gather_with_gradients(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """All ranks' (embeddings, labels) concatenated in rank order, and this rank's row offset in them.

    Embeddings keep their gradient path: the backward of the gather sends each rank the gradient of its rows.
    """
    from torch.distributed._functional_collectives import all_gather_tensor_autograd

    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([embeddings.shape[0]], device=embeddings.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    largest = max(sizes)
    padding = largest - embeddings.shape[0]
    padded = F.pad(embeddings, (0, 0, 0, padding))
    padded_labels = F.pad(labels, (0, padding))
    # (world * largest, D), differentiable: the backward sends each rank the gradient of its own rows
    gathered = all_gather_tensor_autograd(padded, gather_dim=0, group=dist.group.WORLD).split(largest)
    gathered_labels = [torch.empty_like(padded_labels) for _ in range(world)]
    dist.all_gather(gathered_labels, padded_labels)
    candidates = torch.cat([g[:n] for g, n in zip(gathered, sizes)])
    candidate_labels = torch.cat([g[:n] for g, n in zip(gathered_labels, sizes)])
    return candidates, candidate_labels, sum(sizes[:rank])


class CrossEntropyLabelSmooth(nn.Module):
    """Cross entropy with label smoothing, as in the re-ID "bag of tricks" (Luo et al. 2019).

    targets become (1 - epsilon) * one_hot + epsilon / num_classes; logits (B, num_classes), targets (B,).
    """

    def __init__(self, num_classes: int, epsilon: float = 0.1) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes: expected a positive integer, got {num_classes}")
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"epsilon: expected a number in [0, 1), got {epsilon}")
        self.num_classes, self.epsilon = num_classes, epsilon

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits: expected shape (B, {self.num_classes}), got {tuple(logits.shape)}")
        if targets.shape != (logits.shape[0],):
            raise ValueError(f"targets: expected shape ({logits.shape[0]},), got {tuple(targets.shape)}")
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= self.num_classes):
            raise ValueError(f"targets: expected class indices in [0, {self.num_classes}), got values in "
                             f"[{int(targets.min())}, {int(targets.max())}]")
        log_probs = F.log_softmax(logits.float(), dim=1)
        smoothed = torch.full_like(log_probs, self.epsilon / self.num_classes)
        smoothed.scatter_add_(1, targets[:, None].long(), torch.full_like(log_probs[:, :1], 1.0 - self.epsilon))
        return -(smoothed * log_probs).sum(1).mean()
