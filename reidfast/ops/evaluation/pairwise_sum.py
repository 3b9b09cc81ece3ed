"""numpy's float64 pairwise summation, reproduced over sparse vectors: how the fast evaluation backends get
the reference's AP bit for bit without building each query's dense precision vector."""
from __future__ import annotations

import numpy as np

_PAIRWISE_BLOCK = 128  # numpy's PW_BLOCKSIZE
_PAIRWISE_LANES = 8  # numpy's unroll factor


def numpy_sum_of_sparse(segment: np.ndarray, position: np.ndarray, value: np.ndarray, length: np.ndarray) -> np.ndarray:
    """np.sum of sparse float64 vectors, bit for bit, without building them.

    Vector s has length[s] elements, zero except value[e] at position[e] for the entries e with
    segment[e] == s (entries sorted by segment, then by position; no -0.0 values). numpy sums a
    contiguous float64 vector by pairwise summation (numpy/_core/src/umath/loops_utils.h.src): split at
    n // 2 rounded down to a multiple of 8 until n <= 128; a block sums 8 interleaved lanes, combines them
    ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)) and adds the n % 8 tail in order (n < 8: in order).
    Adding +0.0 is exact, so evaluating that tree over the nonzero entries only gives the same float64.
    This mirrors pairwise_sum_of_sparse in csrc/cpu/evaluate.cpp; vectorised over entries, one level of
    the tree per step. Returns (len(length),) float64, 0.0 for empty vectors.
    """
    total = np.zeros(length.size)
    if segment.size == 0:
        return total
    # 1. Descend the recursion to each entry's leaf block, recording the node starts on the way.
    start = np.zeros_like(position)
    size = length[segment].astype(np.int64)
    depth = np.zeros_like(position)
    node_start_at_depth = [start]
    while True:
        split = size > _PAIRWISE_BLOCK
        if not split.any():
            break
        half = size // 2
        half -= half % _PAIRWISE_LANES
        right = split & (position >= start + half)
        start = np.where(right, start + half, start)
        size = np.where(right, size - half, np.where(split, half, size))
        depth = depth + split
        node_start_at_depth.append(start)
    # 2. Leaf blocks: lanes over the unrolled part, their fixed combination, then the tail in order.
    new_leaf = np.r_[True, (segment[1:] != segment[:-1]) | (start[1:] != start[:-1])]
    leaf = np.cumsum(new_leaf) - 1
    offset = position - start
    unrolled = np.where(size < _PAIRWISE_LANES, 0, size - size % _PAIRWISE_LANES)
    in_lanes = offset < unrolled
    lanes = np.zeros((int(leaf[-1]) + 1) * _PAIRWISE_LANES)
    lane_entries = np.flatnonzero(in_lanes)
    lane_of_entry = leaf[lane_entries] * _PAIRWISE_LANES + offset[lane_entries] % _PAIRWISE_LANES
    lane_order = np.argsort(lane_of_entry, kind="stable")  # each lane's entries together, in position order
    _add_in_order(lanes, lane_of_entry[lane_order], value[lane_entries][lane_order])
    r = lanes.reshape(-1, _PAIRWISE_LANES)
    node_value = ((r[:, 0] + r[:, 1]) + (r[:, 2] + r[:, 3])) + ((r[:, 4] + r[:, 5]) + (r[:, 6] + r[:, 7]))
    tail_entries = np.flatnonzero(~in_lanes)
    _add_in_order(node_value, leaf[tail_entries], value[tail_entries])
    # 3. Up the tree: at each depth, siblings (adjacent in position order) add into their parent.
    node_entry = np.flatnonzero(new_leaf)  # an entry inside each node, to look up its ancestors
    node_depth = depth[node_entry]
    for level in range(int(node_depth.max()), 0, -1):
        at_level = np.flatnonzero(node_depth == level)
        if at_level.size == 0:
            continue
        entry = node_entry[at_level]
        parent_segment, parent_start = segment[entry], node_start_at_depth[level - 1][entry]
        first_child = np.r_[True, (parent_segment[1:] != parent_segment[:-1]) | (parent_start[1:] != parent_start[:-1])]
        left, right = at_level[first_child], at_level[~first_child]
        node_value[left[np.cumsum(first_child)[~first_child] - 1]] += node_value[right]  # left + right
        node_depth[left] = level - 1
        keep = np.ones(node_value.size, dtype=bool)
        keep[right] = False
        node_value, node_depth, node_entry = node_value[keep], node_depth[keep], node_entry[keep]
    total[segment[node_entry]] = node_value
    return total


def _add_in_order(accumulator: np.ndarray, group: np.ndarray, values: np.ndarray) -> None:
    """accumulator[group[i]] += values[i] for i = 0, 1, ... in order, as a loop would (equal groups adjacent)."""
    if group.size == 0:
        return
    group_start = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    group_length = np.diff(np.r_[group_start, group.size])
    for step in range(int(group_length.max())):
        entries = group_start[group_length > step] + step  # one entry per group: no repeated index
        accumulator[group[entries]] += values[entries]
