"""Triton rank counting fused into the distance tile, for evaluation straight from features (issue 17).

Each program computes one (BLOCK_N queries x BLOCK_M gallery items) distance tile with distance.distance_tile,
launched with pairwise_distance's TileOptions, so every entry is bitwise the float pairwise_distance gives
(the pivots' distances come from pairwise_distance). The epilogue then does what csrc/cpu/rank_count.cpp does
on a block of distances:

  Per row r the pivots (its correct matches, or its sampled matches for CUHK03) are sorted by the ranking key
  (distance, gallery index), as CSR arrays by pivot_offsets. An item (d, g) ranks before pivot j iff
  (d, g) < (distance[j], index[j]); its slot is #{pivots with a smaller key}, and slot < count adds 1 to
  histogram[(offsets[r] + slot) * num_groups + groups[g]] (groups: each item's identity for CUHK03, else 0).
  Items with the row's own label (its matches and junk) are never counted. NaN entries are counted apart.

Filter first: an entry behind the row's farthest pivot (d > distance[last]) never counts, and that is most
entries; a tile with no survivor skips the epilogue after one compare per entry. Survivors are placed by a
branch-free binary search over their row's pivots (probes at descending powers of two, bit_length(W) steps
for W the most pivots of any row: masked gathers of the pivot arrays, the pivot's index gathered only on a
distance tie). Why not a loop over the pivots: it costs W full-tile compares per tile on the CUDA cores
whatever the survivors, and W is dozens on re-ID galleries (a query's matches), which at D = 256 rivals the
tile's dot product on the tensor cores; the search's gathers touch a few KiB that stay in L1, and only for
survivors. Counts go to the histogram by tl.atomic_add (int64, relaxed: only the sums matter), one per
counted entry.

64-bit offsets: row * stride in distance_tile, pivot offsets and histogram slots int64. Gallery indices and
the pivots' gallery indices are int32 (fewer registers in the search; the launcher requires G < 2**31).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._native import METRIC_CODES
from .distance import distance_tile, tile_options

MAX_GRID_COLUMNS = 65535  # CUDA's limit on grid axis 1 (gallery tiles per launch)
_NEG_INF = tl.constexpr(float("-inf"))  # triton.jit reads only constexpr globals


@triton.jit
def _pivot_slots(dist, item, candidate, first, count, pivot_distance_ptr, pivot_index_ptr, search_steps):
    """For each candidate entry (distance dist, gallery index item) of a (BLOCK_N, BLOCK_M) tile, the number
    of its row's pivots (from `first`, `count` of them) with a smaller (distance, index) key: a binary search
    by descending powers of two (one loop-carried array: fewer registers than lo/hi bounds)."""
    slot = tl.zeros(dist.shape, dtype=tl.int32)
    step = (1 << search_steps) >> 1
    for _ in range(search_steps):
        probe = slot + step
        active = candidate & (probe <= count[:, None])
        pivot = first[:, None] + (probe - 1)
        pivot_distance = tl.load(pivot_distance_ptr + pivot, mask=active, other=0.0)
        pivot_index = tl.load(pivot_index_ptr + pivot, mask=active & (pivot_distance == dist), other=0)
        before = (pivot_distance < dist) | ((pivot_distance == dist) & (pivot_index < item[None, :]))
        slot = tl.where(active & before, probe, slot)
        step = step >> 1
    return slot


@triton.jit
def _rank_count_kernel(
    x_ptr, y_ptr, n, m, dim, x_row_stride, y_row_stride, col0,
    offsets_ptr, pivot_distance_ptr, pivot_index_ptr, row_labels_ptr, item_labels_ptr, groups_ptr,
    histogram_ptr, nan_count_ptr, num_groups, search_steps,
    METRIC: tl.constexpr, HAS_GROUPS: tl.constexpr, FP64: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n
    col_ok = cols < m
    # SAME_INPUT off: a query's distance to itself is junk (its pid, its camera), never counted
    dist = distance_tile(x_ptr, y_ptr, rows, cols, n, m, dim, x_row_stride, y_row_stride,
                         METRIC, False, FP64, INPUT_PRECISION, BLOCK_D)
    valid = row_ok[:, None] & col_ok[None, :]
    num_nan = tl.sum((valid & (dist != dist)).to(tl.int32))
    if num_nan > 0:
        tl.atomic_add(nan_count_ptr, num_nan.to(tl.int64), sem="relaxed")

    first = tl.load(offsets_ptr + rows, mask=row_ok, other=0)
    count = (tl.load(offsets_ptr + rows + 1, mask=row_ok, other=0) - first).to(tl.int32)
    farthest = tl.load(pivot_distance_ptr + first + count - 1, mask=row_ok & (count > 0), other=_NEG_INF)
    candidate = valid & (dist <= farthest[:, None])  # NaN: never
    if tl.max(candidate.to(tl.int32)) > 0:
        item = cols + col0  # global gallery index (< 2**31: the launcher checks)
        item_label = tl.load(item_labels_ptr + item, mask=col_ok, other=0)
        row_label = tl.load(row_labels_ptr + rows, mask=row_ok, other=0)
        candidate = candidate & (item_label[None, :] != row_label[:, None])
        slot = _pivot_slots(dist, item, candidate, first, count, pivot_distance_ptr, pivot_index_ptr, search_steps)
        counted = candidate & (slot < count[:, None])
        flat = (first[:, None] + slot) * num_groups
        if HAS_GROUPS:
            flat += tl.load(groups_ptr + item, mask=col_ok, other=0)[None, :]
        tl.atomic_add(histogram_ptr + flat, tl.full(dist.shape, 1, tl.int64), mask=counted, sem="relaxed")


def _expect(condition: bool, name: str, expected: str, got) -> None:
    if not condition:
        raise ValueError(f"{name}: expected {expected}, got {got}")


def rank_count_block(
    query: torch.Tensor, gallery: torch.Tensor, col0: int, pivot_offsets: torch.Tensor, pivot_distance: torch.Tensor,
    pivot_index: torch.Tensor, row_labels: torch.Tensor, item_labels: torch.Tensor, groups: torch.Tensor | None,
    num_groups: int, histogram: torch.Tensor, nan_count: torch.Tensor, metric: str, search_steps: int,
) -> None:
    """Adds the counts of gallery rows col0 .. col0 + len(gallery) to histogram (and their NaNs to nan_count).

    query (Q, D), gallery (B, D): one floating dtype and device, unit inner stride; gallery's row 0 is global
    gallery item col0. pivot_offsets (Q + 1,) int64; pivot_distance (P,) float32 (float64 for float64
    features), sorted per row by (distance, index); pivot_index (P,) int32 global indices (the gallery
    has fewer than 2**31 items; int32 spares registers in the search); row_labels (Q,) and
    item_labels (>= col0 + B,) int64; groups None (num_groups 1) or (>= col0 + B,) int64 in [0, num_groups);
    histogram (P * num_groups,) int64; nan_count (1,) int64. search_steps >= bit_length(max pivots per row).
    """
    options = tile_options(query)
    device = query.device
    _expect(gallery.dtype == query.dtype and gallery.device == device and gallery.shape[1] == query.shape[1],
            "gallery", f"(B, {query.shape[1]}) {query.dtype} on {device}",
            f"{tuple(gallery.shape)} {gallery.dtype} on {gallery.device}")
    _expect(pivot_distance.dtype == options.out_dtype, "pivot_distance", str(options.out_dtype), pivot_distance.dtype)
    _expect(pivot_index.dtype == torch.int32, "pivot_index", "int32", pivot_index.dtype)
    _expect(col0 + gallery.shape[0] < 2**31, "gallery", "global indices below 2**31", col0 + gallery.shape[0])
    for name, tensor in (("pivot_offsets", pivot_offsets), ("pivot_index", pivot_index), ("row_labels", row_labels),
                         ("item_labels", item_labels), ("histogram", histogram), ("nan_count", nan_count),
                         ("pivot_distance", pivot_distance)) + ((("groups", groups),) if groups is not None else ()):
        _expect(tensor.device == device and tensor.dim() == 1 and tensor.is_contiguous(), name,
                f"a contiguous vector on {device}", f"shape {tuple(tensor.shape)} on {tensor.device}")
        _expect(tensor is pivot_distance or tensor is pivot_index or tensor.dtype == torch.int64, name, "int64",
                tensor.dtype)
    _expect(pivot_offsets.shape[0] == query.shape[0] + 1, "pivot_offsets", f"length {query.shape[0] + 1}",
            pivot_offsets.shape[0])
    _expect(histogram.shape[0] == pivot_index.shape[0] * num_groups, "histogram",
            f"length {pivot_index.shape[0] * num_groups}", histogram.shape[0])
    _expect(groups is not None or num_groups == 1, "num_groups", "1 without groups", num_groups)
    num_query, num_items = query.shape[0], gallery.shape[0]
    if num_query == 0 or num_items == 0:
        return
    grid_m = min(triton.cdiv(num_items, options.block_m), MAX_GRID_COLUMNS)
    for start in range(0, num_items, grid_m * options.block_m):  # only galleries past 4M items per call loop
        block = gallery[start:start + grid_m * options.block_m]
        grid = (triton.cdiv(num_query, options.block_n), triton.cdiv(block.shape[0], options.block_m))
        _rank_count_kernel[grid](
            query, block, num_query, block.shape[0], query.shape[1], query.stride(0), block.stride(0), col0 + start,
            pivot_offsets, pivot_distance, pivot_index, row_labels, item_labels,
            groups if groups is not None else item_labels, histogram, nan_count, num_groups, search_steps,
            METRIC=METRIC_CODES[metric], HAS_GROUPS=groups is not None, **options.constants(),
        )
