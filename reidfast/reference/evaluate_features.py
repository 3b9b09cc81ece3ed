"""Plain evaluation straight from features, and the slot counting of one block of distances: the ground
truth for reidfast.evaluate_features and its counting kernel (csrc/cpu/rank_count.cpp).

Both materialise what the fast path never holds (the whole Q x G matrix, a block x pivots comparison);
they are for tests on small sets.
"""
from __future__ import annotations

import numpy as np
import torch

from . import distance, evaluation

__all__ = ["evaluate_features", "rank_count_block"]


def evaluate_features(
    query_feats,
    gallery_feats,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    metric: str = "euclidean",
    protocol: str = "market1501",
    max_rank: int = 50,
    seed: int | None = 0,
    num_repeats: int = 10,
) -> evaluation.EvaluationResult:
    """The reference distances (reference.distance.pairwise_distance) evaluated by the reference evaluator."""
    distmat = distance.pairwise_distance(torch.as_tensor(query_feats), torch.as_tensor(gallery_feats), metric)
    args = (distmat.detach().numpy(), q_pids, g_pids, q_camids, g_camids)
    if protocol == "cuhk03":
        return evaluation.evaluate_cuhk03(*args, max_rank=max_rank, num_repeats=num_repeats, seed=seed)
    return evaluation.evaluate_market1501(*args, max_rank=max_rank)


def rank_count_block(
    distances: np.ndarray,
    col0: int,
    pivot_offsets: np.ndarray,
    pivot_distance: np.ndarray,
    pivot_index: np.ndarray,
    groups: np.ndarray | None = None,
    num_groups: int = 1,
) -> tuple[np.ndarray, int]:
    """One block's slot histogram -> (histogram (P * num_groups,) int64, number of NaN distances).

    distances (rows, cols): column c is gallery item col0 + c. Row r's pivots are entries
    pivot_offsets[r]:pivot_offsets[r + 1] of pivot_distance / pivot_index, sorted by (distance, index).
    An item's slot is the number of its row's pivots whose (distance, index) key is smaller than its own;
    items with a slot below the row's pivot count add 1 at (pivot_offsets[r] + slot, group of the item).
    """
    rows, cols = distances.shape
    histogram = np.zeros((pivot_distance.size, num_groups), dtype=np.int64)
    items = col0 + np.arange(cols)
    item_group = np.zeros(cols, dtype=np.int64) if groups is None else np.asarray(groups)[items]
    nan_count = int(np.isnan(distances).sum())
    for r in range(rows):
        first, last = int(pivot_offsets[r]), int(pivot_offsets[r + 1])
        if first == last:
            continue
        values = distances[r][:, None]
        pivot_d, pivot_i = pivot_distance[None, first:last], pivot_index[None, first:last]
        slot = ((pivot_d < values) | ((pivot_d == values) & (pivot_i < items[:, None]))).sum(1)
        counted = (slot < last - first) & ~np.isnan(distances[r])
        np.add.at(histogram, (first + slot[counted], item_group[counted]), 1)
    return histogram.reshape(-1), nan_count

