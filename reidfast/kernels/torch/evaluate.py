"""Re-ID ranking evaluation from torch ops on the distmat's device: the ``torch`` backend of evaluate.

The same protocol as csrc/cpu/evaluate.cpp (see reidfast/ops/evaluation), on whatever device torch runs
(CUDA distmats by default, CPU ones when forced), in chunks of query rows:

1. match positions: one stable sort per row (ties by gallery index), the kept rank of every correct match
   (a cumulative count of the kept items in sorted order); only those O(matches) ranks go to the host, where
   the op layer turns them into AP, INP and the first match;
2. CUHK03 sampled ranks: per repeat, each identity's images before the sampled match are counted by
   comparison and scatter_add, so the rank of the sampled match in the sampled gallery needs no second sort.
"""
from __future__ import annotations

import numpy as np
import torch


def evaluate(
    distmat: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor, q_camids: torch.Tensor,
    g_camids: torch.Tensor, rows_per_chunk: int, sampling=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(num_matches (Q,), num_kept (Q,), positions (sum of matches,)) int64 host arrays: per query its number of
    correct matches and of kept gallery items, and each match's 0-based rank among the kept items, query after
    query in ranking order. distmat (Q, G) and the int64 labels on one device. With `sampling` (CUHK03) each
    chunk's sampled ranks go to sampling.add_sampled_ranks, in query order."""
    device = distmat.device
    num_query, num_gallery = distmat.shape
    q_pids, g_pids, q_camids, g_camids = (t.to(device) for t in (q_pids, g_pids, q_camids, g_camids))
    identity = None if sampling is None else sampling.identity.to(device)
    num_matches_parts, num_removed_parts, position_parts = [], [], []
    for start in range(0, num_query, rows_per_chunk):
        end = min(start + rows_per_chunk, num_query)
        chunk = distmat[start:end]
        if chunk.is_floating_point():
            chunk = chunk + 0  # -0.0 -> +0.0, so that no sort implementation can order it before +0.0
        num_matches, num_removed, positions, match_gallery_index = match_positions(
            chunk, q_pids[start:end], g_pids, q_camids[start:end], g_camids
        )
        num_matches_parts.append(num_matches.cpu())
        num_removed_parts.append(num_removed.cpu())
        position_parts.append(positions.cpu())
        if sampling is not None:
            sampling.add_sampled_ranks(
                cuhk03_sampled_ranks(chunk, sampling, start, end, num_matches, match_gallery_index, identity)
            )
        del chunk, match_gallery_index  # before the next chunk's sort
    num_matches = torch.cat(num_matches_parts).numpy()
    num_kept = num_gallery - torch.cat(num_removed_parts).numpy()
    return num_matches, num_kept, torch.cat(position_parts).numpy()


def match_positions(
    chunk: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor, q_camids: torch.Tensor, g_camids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of a distmat (C, G) and their labels, on one device -> per row the number of matches (C,) and of
    removed items (C,), and per match, row after row in ranking order: its 0-based rank among the row's kept
    items and its gallery index (each (sum of matches,))."""
    order = torch.sort(chunk, dim=1, stable=True).indices  # ties by gallery index
    same_pid = q_pids[:, None] == g_pids
    removed = same_pid & (q_camids[:, None] == g_camids)
    is_match = same_pid & ~removed
    del same_pid
    kept_dtype = torch.int32 if chunk.shape[1] < 2**31 else torch.int64
    kept_rank = (~removed).gather(1, order).cumsum(1, dtype=kept_dtype)  # 1-based rank among the kept items
    match_rows, match_columns = is_match.gather(1, order).nonzero(as_tuple=True)  # row-major: ranking order
    positions = (kept_rank[match_rows, match_columns] - 1).to(torch.int64)
    return is_match.sum(1), removed.sum(1), positions, order[match_rows, match_columns]


def cuhk03_sampled_ranks(
    chunk: torch.Tensor,
    sampling,
    start: int,
    end: int,
    num_matches: torch.Tensor,
    match_gallery_index: torch.Tensor,
    identity: torch.Tensor,
) -> np.ndarray:
    """Rank of the sampled match in each sampled gallery, (valid rows of the chunk, R) int64 on the host.

    chunk (C, G) distances; num_matches (C,); match_gallery_index (sum num_matches,): each row's matches in
    ranking order; identity (G,): gallery identity indices, all on the chunk's device; sampling: the CUHK03 draws
    (reidfast/ops/evaluation/cuhk03.py: draw, valid_rows, query_identity, num_repeats). An identity's o-th
    image (in ranking order) ranks before the sampled match P iff more than o of its images rank before P.
    """
    device = chunk.device
    offsets_np, valid_rows = sampling.draw(start, end), sampling.valid_rows(start, end)
    if valid_rows.size == 0:
        return np.zeros((0, sampling.num_repeats), dtype=np.int64)
    if valid_rows.size < chunk.shape[0]:
        offsets_np = offsets_np[valid_rows]
    rows = torch.from_numpy(valid_rows).to(device)
    distances = chunk if valid_rows.size == chunk.shape[0] else chunk[rows]
    offsets = torch.from_numpy(offsets_np).to(device)  # (V, R, J)
    own_identity = torch.from_numpy(sampling.query_identity[start:end][valid_rows]).to(device)
    first_match = (torch.cumsum(num_matches, 0) - num_matches)[rows]
    own_offsets = offsets.gather(2, own_identity[:, None, None].expand(-1, sampling.num_repeats, 1)).squeeze(2)
    pivot = match_gallery_index[first_match[:, None] + own_offsets]  # (V, R) gallery index of the sampled match
    pivot_distance = distances.gather(1, pivot)
    gallery_index = torch.arange(chunk.shape[1], device=device)
    identity_of_item = identity.expand(distances.shape[0], -1)
    ranks = torch.empty((distances.shape[0], sampling.num_repeats), dtype=torch.int64, device=device)
    for r in range(sampling.num_repeats):
        p_distance, p_index = pivot_distance[:, r : r + 1], pivot[:, r : r + 1]
        before = (distances < p_distance) | ((distances == p_distance) & (gallery_index < p_index))
        images_before = torch.zeros(offsets.shape[0], offsets.shape[2], dtype=torch.int32, device=device)
        images_before.scatter_add_(1, identity_of_item, before.to(torch.int32))
        images_before.scatter_(1, own_identity[:, None], 0)  # the query's own identity: never counted
        ranks[:, r] = 1 + (images_before > offsets[:, r, :]).sum(1)
    return ranks.cpu().numpy()
