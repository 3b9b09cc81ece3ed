"""Re-ID evaluation straight from features: CMC, mAP and mINP without ever holding the Q x G distance matrix.

The numbers are those of ``rf.evaluate(rf.pairwise_distance(qf, gf, metric), ...)`` exactly: the same
distances (each one computed by the same kernel with the same float operations; an entry of the fused CPU
kernels does not depend on the tiling), the same ranking (ties by gallery index), junk and distractors,
skipped queries and CUHK03 draws, and the same float64 AP/INP arithmetic (ops/evaluation.py).

Method:
  1. pivots: each query's correct matches (gallery items of its pid in another camera), their distances
     computed first (per PAIR_ROWS queries, a small product against the union of their identities' items),
     sorted by (distance, gallery index);
  2. one blockwise pass over the gallery: per query, a histogram of the gallery items of other identities
     over the slots between consecutive matches, counted inside the fused kernel's distance tile
     (csrc/cpu/gemm_rank_count.cpp: a vector compare drops the items behind the farthest match) while few
     items rank before it (a sample decides, _HostPass._counts_in_tile), else (and on the BLAS path) from a
     block of distances by csrc/cpu/rank_count.cpp; junk and the other matches are never counted;
  3. the histogram's prefix sum at match j, plus j, is the match's 0-based rank among the kept items, from
     which AP, INP and the CMC follow in the reference's float64 arithmetic (ops/evaluation.py).
CUHK03 adds one pass per block of queries with a histogram per gallery identity at the sampled matches.
Memory: O(Q * (matches + block)); the block is about BLOCK_BYTES of distances.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .. import _native
from .._dispatch import Op, use_backend
from ..reference import evaluate_features as reference
from . import evaluation as _evaluation
from .distance import _pairwise_distance_op, _unit_inner_stride, cpu_gemm_kernel
from .evaluate_features_inputs import _Inputs, _validate
from .evaluation.result import RankingResult, from_reference

EVALUATE_FEATURES = Op("evaluate_features")
BLOCK_BYTES = 32 << 20  # distances of one gallery block against the query rows of a pass (host)
DEVICE_BLOCK_BYTES = {"cpu": 64 << 20, "cuda": 512 << 20}  # the torch backend's temporaries per block
_DEVICE_BYTES_PER_DISTANCE = 48  # the torch backend per distance: the distance, two int64 slots, flat index
CUHK03_HISTOGRAM_BYTES = 64 << 20  # per-identity histograms of one block of CUHK03 queries
PAIR_ROWS = 256  # query rows per product for the match distances: fewer, larger calls (union ~7% of a Market pass)
MIN_BLOCK_COLUMNS = 256
SURVIVOR_SAMPLE = 256  # gallery items whose distances choose between fused and two-pass counting (cpu)
FUSED_MAX_SURVIVORS = 0.04  # fused counting while fewer items than this rank before their row's farthest match


# -------------------------------------------------------------------------------------------------------
# Pivots: each query's correct matches with their distances, sorted by (distance, gallery index).
# -------------------------------------------------------------------------------------------------------
@dataclass
class _Pivots:
    """Each query's correct matches (its pid, another camera), sorted by (distance, gallery index), as CSR
    arrays by offsets (Q + 1,); and each query's junk count (its pid, its camera)."""

    offsets: np.ndarray
    index: np.ndarray
    distance: np.ndarray
    num_junk: np.ndarray

    @property
    def num_matches(self) -> np.ndarray:
        return np.diff(self.offsets)


def _own_pid_pairs(labels: _evaluation._Labels) -> tuple[np.ndarray, np.ndarray]:
    """(query, gallery index) of every gallery item with the query's pid, grouped by query, (S,) each."""
    q_pids, g_pids = labels.q_pids.numpy(), labels.g_pids.numpy()
    order = np.argsort(g_pids, kind="stable")
    sorted_pids = g_pids[order]
    first = np.searchsorted(sorted_pids, q_pids, side="left")
    count = np.searchsorted(sorted_pids, q_pids, side="right") - first
    query = np.repeat(np.arange(q_pids.size), count)
    start = np.repeat(first - (np.cumsum(count) - count), count)
    return query, order[start + np.arange(query.size)]


def _pair_distances(
    inputs: _Inputs, query: np.ndarray, gallery: np.ndarray, distances: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> np.ndarray:
    """Distances of the pairs (query[s], gallery[s]) (grouped by query) by `distances` on rows of the features:
    per PAIR_ROWS queries (in pid order, so that their items overlap), one product against their items' union."""
    result = np.empty(query.size, dtype=np.float64 if inputs.distance_dtype == torch.float64 else np.float32)
    if query.size == 0:
        return result
    queries, first, count = np.unique(query, return_index=True, return_counts=True)
    by_pid = np.argsort(inputs.labels.q_pids.numpy()[queries], kind="stable")
    queries, first, count = queries[by_pid], first[by_pid], count[by_pid]
    for start in range(0, queries.size, PAIR_ROWS):
        rows = slice(start, start + PAIR_ROWS)
        pairs = np.concatenate([np.arange(f, f + c) for f, c in zip(first[rows], count[rows])])
        columns, column_of_pair = np.unique(gallery[pairs], return_inverse=True)
        row_of_pair = np.repeat(np.arange(queries[rows].size), count[rows])
        block = distances(_take_rows(inputs.query, queries[rows]), _take_rows(inputs.gallery, columns))
        result[pairs] = block.cpu().numpy()[row_of_pair, column_of_pair.reshape(-1)]  # a small block
    return result


_SAME_SIZE_INTEGER = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _take_rows(tensor: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """tensor[rows], contiguous. On the host through numpy (as same-size integers, so bfloat16 too): torch's
    indexing wakes its thread pool per call, which cost ~10 ms a call on a loaded 2-core machine."""
    if tensor.device.type != "cpu":
        return tensor[torch.from_numpy(rows).to(tensor.device)]
    bits = tensor.view(_SAME_SIZE_INTEGER[tensor.element_size()]).numpy()
    return torch.from_numpy(np.ascontiguousarray(bits[rows])).view(tensor.dtype)


def _pivots(inputs: _Inputs, distances: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> _Pivots:
    """The correct matches of every query with their distances (computed first, by `distances`), sorted."""
    labels = inputs.labels
    num_query = labels.q_pids.shape[0]
    query, gallery = _own_pid_pairs(labels)
    junk = labels.g_camids.numpy()[gallery] == labels.q_camids.numpy()[query]
    num_junk = np.bincount(query[junk], minlength=num_query)
    query, gallery = query[~junk], gallery[~junk]
    offset = 0 if inputs.shard is None else inputs.shard.offset
    if inputs.shard is not None:  # the matches in this rank's shard, then every rank's
        local = (gallery >= offset) & (gallery < offset + inputs.gallery.shape[0])
        query, gallery = query[local], gallery[local]
    distance = _pair_distances(inputs, query, gallery - offset, distances)
    if inputs.shard is not None:
        gathered = [inputs.shard.all_gather(torch.from_numpy(a)) for a in (query, gallery)]
        distance = inputs.shard.all_gather(torch.from_numpy(distance)).numpy()
        query, gallery = (t.numpy() for t in gathered)
    if np.isnan(distance).any():
        _raise_nan(int(np.isnan(distance).sum()))
    order = np.lexsort((gallery, distance, query))  # by query, then (distance, index); -0.0 ties +0.0
    return _Pivots(
        offsets=np.r_[0, np.cumsum(np.bincount(query, minlength=num_query))],
        index=gallery[order],
        distance=distance[order],
        num_junk=num_junk,
    )


def _raise_nan(count: int) -> None:
    raise ValueError(
        f"query_feats, gallery_feats: expected comparable distances, got {count} NaN distance(s) "
        "(features too large for float32 arithmetic?)"
    )


# -------------------------------------------------------------------------------------------------------
# Backends: one blockwise pass = block distances + a histogram of each block over the rows' pivot slots.
# -------------------------------------------------------------------------------------------------------
def _block_ranges(num_gallery: int, block: int, progress: bool, description: str) -> Iterator[tuple[int, int]]:
    starts = range(0, num_gallery, block)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=description, unit="block")
    for start in starts:
        yield start, min(start + block, num_gallery)


def _block_columns(chunk_size: int | None, rows: int, bytes_per_distance: int, budget: int) -> int:
    if chunk_size is not None:
        return chunk_size
    return max(MIN_BLOCK_COLUMNS, budget // max(1, rows * bytes_per_distance) // 64 * 64)


class _HostPass:
    """The cpu backend's pass: with a fused SIMD kernel, the counting fused into its distance tile (no block of
    distances is stored; csrc/cpu/gemm_rank_count.cpp); otherwise BLAS + the native epilogue (as
    pairwise_distance's cpu backend) into one reused block buffer, then the native counting kernel."""

    name = "cpu"
    # None: chosen per call from a sample of the gallery (_counts_in_tile); True / False force the fused / two-pass
    # counting (tests compare them, the benchmarks time both).
    fused_counting: bool | None = None

    def __init__(self, inputs: _Inputs) -> None:
        self.inputs = inputs
        self.kernel = cpu_gemm_kernel(inputs.query.dtype)
        self.metric_code = _native.METRIC_CODES[inputs.metric]
        if self.kernel is not None:
            self.query, self.gallery = _unit_inner_stride(inputs.query), _unit_inner_stride(inputs.gallery)
        else:
            dtype = inputs.distance_dtype
            self.query, self.gallery = inputs.query.to(dtype), inputs.gallery.to(dtype)
            self.query_norms, self.gallery_norms = (self.query * self.query).sum(1), (self.gallery * self.gallery).sum(1)

    def distances(self, query: torch.Tensor, gallery: torch.Tensor, out: torch.Tensor | None = None,
                  query_norms: torch.Tensor | None = None, gallery_norms: torch.Tensor | None = None) -> torch.Tensor:
        """Distances of rows of the features, entry for entry pairwise_distance's (cpu backend)."""
        view = _native.view
        if out is None:
            out = torch.empty((query.shape[0], gallery.shape[0]), dtype=self.inputs.distance_dtype)
        if self.kernel is not None:
            _native._C.fused_pairwise_distance_cpu(view(query), view(gallery), self.metric_code, False, view(out), self.kernel)
            return out
        query, gallery = query.to(self.inputs.distance_dtype), gallery.to(self.inputs.distance_dtype)
        query_norms = (query * query).sum(1) if query_norms is None else query_norms
        gallery_norms = (gallery * gallery).sum(1) if gallery_norms is None else gallery_norms
        torch.mm(query, gallery.T, out=out)
        _native._C.distance_epilogue_cpu(view(out), view(query_norms), view(gallery_norms), self.metric_code, -1)
        return out

    def _counts_in_tile(self, query: torch.Tensor, pivot_offsets: np.ndarray, pivot_distance: np.ndarray) -> bool:
        """Whether to count in the distance tile. The fused kernel places every item that ranks before its row's
        farthest match inside the tile, by a scalar binary search, while the two-pass kernel places them in a
        vectorised second pass: fused wins while such items are few. Measured on the 2-core Zen 3 (G = 100k and
        Market + 500k, d256): with 0.7-2.6 % of the items before the farthest match (mAP 0.53-0.77) fused was
        1.5-3 % faster, with 6.6 % (mAP 0.2-0.3) 7-8 % slower. So: that fraction in SURVIVOR_SAMPLE evenly
        spread gallery items (~10 ms at Q 3,368, d256), fused below FUSED_MAX_SURVIVORS."""
        if self.fused_counting is not None:
            return bool(self.fused_counting)
        num_gallery, counts = self.gallery.shape[0], np.diff(pivot_offsets)
        if num_gallery < 8 * SURVIVOR_SAMPLE or not counts.any():
            return True  # a small gallery: either is quick, and fused stores nothing
        farthest = np.full(counts.size, -np.inf, dtype=pivot_distance.dtype)
        farthest[counts > 0] = pivot_distance[pivot_offsets[1:][counts > 0] - 1]
        columns = torch.linspace(0, num_gallery - 1, SURVIVOR_SAMPLE).round().long()
        sample = self.distances(query, self.gallery[columns])
        before = int((sample <= torch.from_numpy(farthest).to(sample.dtype)[:, None]).sum())
        return before < FUSED_MAX_SURVIVORS * sample.numel()

    def histogram(self, rows: np.ndarray, pivot_offsets: np.ndarray, pivot_distance: np.ndarray,
                  pivot_index: np.ndarray, groups: torch.Tensor | None, num_groups: int, chunk_size: int | None,
                  progress: bool) -> np.ndarray:
        """(P * num_groups,) int64 slot histogram of the query rows `rows` over the whole gallery."""
        query = _take_rows(self.query, rows) if rows.size < self.query.shape[0] else self.query
        query_norms = None if self.kernel is not None else self.query_norms[torch.from_numpy(rows)]
        num_gallery = self.gallery.shape[0]
        fused = self.kernel is not None and self._counts_in_tile(query, pivot_offsets, pivot_distance)
        # Fused: no distances stored, so blocks of about BLOCK_BYTES of gallery rows packed as float32 per call.
        per_column = (1, 4 * self.gallery.shape[1]) if fused else (rows.size, self.inputs.distance_dtype.itemsize)
        block = _block_columns(chunk_size, *per_column, BLOCK_BYTES)
        buffer = torch.empty(0 if fused else rows.size * min(block, num_gallery), dtype=self.inputs.distance_dtype)
        histogram = torch.zeros(pivot_index.size * num_groups, dtype=torch.int64)
        offsets, distance, index = (torch.from_numpy(np.ascontiguousarray(a)) for a in (pivot_offsets, pivot_distance, pivot_index))
        view = _native.view
        group_view = None if groups is None else view(groups)
        row_labels, item_labels = view(self.inputs.labels.q_pids[torch.from_numpy(rows)]), view(self.inputs.labels.g_pids)
        nan_count = 0
        offset = 0 if self.inputs.shard is None else self.inputs.shard.offset
        for start, end in _block_ranges(num_gallery, block, progress, "evaluate_features"):
            if fused:
                nan_count += _native._C.fused_rank_count_cpu(
                    view(query), view(self.gallery[start:end]), self.metric_code, offset + start, view(offsets),
                    view(distance), view(index), row_labels, item_labels, group_view, num_groups, view(histogram),
                    kernel=self.kernel,
                )
                continue
            out = buffer[: rows.size * (end - start)].view(rows.size, end - start)
            norms = None if self.kernel is not None else self.gallery_norms[start:end]
            self.distances(query, self.gallery[start:end], out, query_norms, norms)
            nan_count += _native._C.rank_count_block_cpu(
                view(out), offset + start, view(offsets), view(distance), view(index), row_labels, item_labels, group_view,
                num_groups, view(histogram),
            )
        return _finish_histogram(self.inputs, histogram.numpy(), nan_count)


class _TorchPass:
    """The torch backend's pass, for CUDA tensors (and CPU tensors when forced): the device's own distance
    kernel (pairwise_distance's default backend for the device) on blocks of the gallery, the slots by
    torch.searchsorted on each row's sorted pivot distances (ties resolved by gallery index), and a
    bincount over (row, slot, group)."""

    name = "torch"

    def __init__(self, inputs: _Inputs) -> None:
        self.inputs = inputs

    def distances(self, query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        with use_backend(None), torch.no_grad():  # the distance op's own default for the device
            return _pairwise_distance_op(query, gallery, self.inputs.metric)

    def histogram(self, rows, pivot_offsets, pivot_distance, pivot_index, groups, num_groups, chunk_size, progress):
        device = self.inputs.query.device
        query = _take_rows(self.inputs.query, rows)
        counts = np.diff(pivot_offsets)
        width = max(1, int(counts.max()) if counts.size else 1)
        # Padded (rows, width) pivots: +inf distance and the largest index after each row's own.
        padded_distance = torch.full((rows.size, width), math.inf, dtype=self.inputs.distance_dtype)
        padded_index = torch.full((rows.size, width), torch.iinfo(torch.int64).max, dtype=torch.int64)
        row_of_pivot = np.repeat(np.arange(rows.size), counts)
        column_of_pivot = np.arange(pivot_index.size) - np.repeat(pivot_offsets[:-1], counts)
        padded_distance[row_of_pivot, column_of_pivot] = torch.from_numpy(pivot_distance).to(padded_distance.dtype)
        padded_index[row_of_pivot, column_of_pivot] = torch.from_numpy(pivot_index)
        padded_distance, padded_index = padded_distance.to(device), padded_index.to(device)
        row_count = torch.from_numpy(counts).to(device)
        slots = (width + 1) * num_groups  # per row: slot `width` collects the items after every pivot
        histogram = torch.zeros(rows.size * slots, dtype=torch.int64, device=device)
        groups_device = None if groups is None else groups.to(device)
        num_gallery = self.inputs.gallery.shape[0]
        budget = DEVICE_BLOCK_BYTES.get(device.type, DEVICE_BLOCK_BYTES["cpu"])
        block = _block_columns(chunk_size, rows.size, _DEVICE_BYTES_PER_DISTANCE, budget)
        row_base = torch.arange(rows.size, device=device)[:, None] * slots
        offset = 0 if self.inputs.shard is None else self.inputs.shard.offset
        nan_count = 0
        row_pids = self.inputs.labels.q_pids[torch.from_numpy(rows)].to(device)[:, None]
        g_pids = self.inputs.labels.g_pids.to(device)
        for start, end in _block_ranges(num_gallery, block, progress, "evaluate_features"):
            distances = self.distances(query, self.inputs.gallery[start:end]).contiguous()
            nan = torch.isnan(distances)
            nan_count += int(nan.sum())
            distances.masked_fill_(nan, math.inf)
            columns = slice(offset + start, offset + end)  # global gallery indices
            slot = _slots(padded_distance, padded_index, distances, offset + start)
            counted = (slot < row_count[:, None]) & (g_pids[columns] != row_pids) & ~nan  # the query's own pid: never
            slot = torch.where(counted, slot, width)
            flat = row_base + slot * num_groups
            if groups_device is not None:
                flat = flat + groups_device[columns]
            histogram += torch.bincount(flat.reshape(-1), minlength=rows.size * slots)
            del distances, slot, flat
        histogram = histogram.view(rows.size, width + 1, num_groups)[:, :width].cpu()
        histogram = histogram[torch.from_numpy(row_of_pivot), torch.from_numpy(column_of_pivot)].reshape(-1).numpy()
        return _finish_histogram(self.inputs, histogram, nan_count)


def _finish_histogram(inputs: _Inputs, histogram: np.ndarray, nan_count: int) -> np.ndarray:
    """With group=: the sum over the ranks' shards (counts are additive), and NaN anywhere raises everywhere."""
    if inputs.shard is not None:
        summed = inputs.shard.all_reduce(np.r_[histogram, nan_count])
        histogram, nan_count = summed[:-1], int(summed[-1])
    if nan_count:
        _raise_nan(nan_count)
    return histogram


def _slots(pivot_distance: torch.Tensor, pivot_index: torch.Tensor, distances: torch.Tensor, col0: int) -> torch.Tensor:
    """#{pivots of the row with (distance, index) < (d, col0 + c)} for every entry d of distances (R, C)."""
    below = torch.searchsorted(pivot_distance, distances, right=False)
    upto = torch.searchsorted(pivot_distance, distances, right=True)
    ties = upto > below  # pivots at the same distance: those of a smaller index rank first
    if bool(ties.any()):
        rows, cols = ties.nonzero(as_tuple=True)
        first, width = below[rows, cols], (upto - below)[rows, cols]
        item = cols + col0
        extra = torch.zeros_like(first)
        for step in range(int(width.max())):
            column = torch.minimum(first + step, torch.tensor(pivot_index.shape[1] - 1, device=first.device))
            extra += ((step < width) & (pivot_index[rows, column] < item)).to(extra.dtype)
        below = below.index_put((rows, cols), first + extra)
    return below


@EVALUATE_FEATURES.register("cpu")
def _evaluate_cpu(inputs: _Inputs, protocol: str, seed: Any, num_repeats: int, chunk_size, progress) -> RankingResult:
    return _evaluate_with(_HostPass(inputs), inputs, protocol, seed, num_repeats, chunk_size, progress)


@EVALUATE_FEATURES.register("torch")
def _evaluate_torch(inputs: _Inputs, protocol: str, seed: Any, num_repeats: int, chunk_size, progress) -> RankingResult:
    return _evaluate_with(_TorchPass(inputs), inputs, protocol, seed, num_repeats, chunk_size, progress)


@EVALUATE_FEATURES.register("reference")
def _evaluate_reference(inputs: _Inputs, protocol: str, seed: Any, num_repeats: int, chunk_size, progress) -> RankingResult:
    """The whole matrix by the reference distance and the reference evaluator (small sets only)."""
    if inputs.shard is not None:
        raise ValueError("group: the reference backend evaluates one process's gallery; use the cpu or torch backend")
    labels = inputs.labels
    args = [t.numpy() for t in (labels.q_pids, labels.g_pids, labels.q_camids, labels.g_camids)]
    result = reference.evaluate_features(
        inputs.query.cpu(), inputs.gallery.cpu(), *args, metric=inputs.metric, protocol=protocol,
        max_rank=labels.max_rank, seed=seed, num_repeats=num_repeats,
    )
    return from_reference(result, inputs.gallery.shape[0], protocol, "reference")


def _evaluate_with(pass_, inputs: _Inputs, protocol, seed, num_repeats, chunk_size, progress,
                   pivots: _Pivots | None = None) -> RankingResult:
    labels = inputs.labels
    num_query, num_gallery = inputs.query.shape[0], labels.g_pids.shape[0]  # global with group=
    pivots = _pivots(inputs, pass_.distances) if pivots is None else pivots  # given: re-ranked scores
    histogram = pass_.histogram(np.arange(num_query), pivots.offsets, pivots.distance, pivots.index, None, 1,
                                chunk_size, progress)
    # Match j of a query (0-based, in ranking order) has j matches and the counted other-pid items before it.
    within_query = np.arange(pivots.index.size) - np.repeat(pivots.offsets[:-1], pivots.num_matches)
    positions = _prefix_sums_by_row(histogram, pivots.offsets) + within_query
    num_matches = pivots.num_matches
    per_query = _evaluation._metrics_from_match_positions(num_matches, positions, num_gallery - pivots.num_junk)
    sampling = None
    if protocol == "cuhk03":
        sampling = _evaluation._Cuhk03Sampling(labels, num_repeats, seed)
        if not np.array_equal(sampling.num_matches, num_matches):
            raise RuntimeError("internal: CUHK03 match counts disagree")  # both count own-pid items of other cameras
        _cuhk03_passes(pass_, sampling, pivots, chunk_size, progress)
    return _evaluation._aggregate(*per_query, labels.max_rank, num_gallery, pass_.name, sampling)


def _prefix_sums_by_row(histogram: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per pivot (rows of pivots by offsets), its row's histogram summed up to it: the counted items with a
    key <= the pivot's. histogram (P,) or (P, groups)."""
    totals = np.cumsum(histogram, axis=0)
    row_start = np.repeat(offsets[:-1], np.diff(offsets))
    before_row = totals[np.maximum(row_start - 1, 0)]
    before_row[row_start == 0] = 0
    return totals - before_row


def _cuhk03_passes(pass_, sampling, pivots: _Pivots, chunk_size, progress) -> None:
    """The rank of the sampled match in each sampled gallery, for blocks of queries in the draws' order: one
    pass per block counting, per gallery identity, the items ranked before each distinct sampled match.
    Identity j's o-th image (in ranking order) is before match P iff more than o of j's images are."""
    num_query = pivots.offsets.size - 1
    num_identities, num_repeats = sampling.num_identities, sampling.num_repeats
    rows_per_block = max(1, min(sampling.rows_per_block, CUHK03_HISTOGRAM_BYTES // (8 * num_repeats * num_identities)))
    for start in range(0, num_query, rows_per_block):
        end = min(start + rows_per_block, num_query)
        offsets = sampling.draw(start, end)  # (B, R, J), valid until the next draw
        valid = sampling.valid_rows(start, end)
        if valid.size == 0:
            continue
        rows = start + valid
        own = sampling.query_identity[rows]
        offsets = offsets[valid]
        sampled_match = np.take_along_axis(offsets, own[:, None, None].repeat(num_repeats, 1), axis=2)[:, :, 0]  # (V, R)
        # The distinct sampled matches of each row, in ranking order, are the pivots of this pass.
        is_pivot = np.zeros((valid.size, int(pivots.num_matches[rows].max())), dtype=bool)
        is_pivot[np.arange(valid.size)[:, None], sampled_match] = True
        pivot_row, pivot_match = np.nonzero(is_pivot)
        pivot_offsets = np.r_[0, np.cumsum(is_pivot.sum(1))]
        match = pivots.offsets[rows][pivot_row] + pivot_match
        histogram = pass_.histogram(
            rows, pivot_offsets, pivots.distance[match], pivots.index[match], sampling.identity, num_identities,
            chunk_size, progress,
        )
        before = _prefix_sums_by_row(histogram.reshape(-1, num_identities), pivot_offsets)  # (P, J)
        pivot_of_sample = pivot_offsets[:-1, None] + np.take_along_axis(np.cumsum(is_pivot, axis=1) - 1, sampled_match, axis=1)
        ahead = (before[pivot_of_sample] > offsets) & (np.arange(num_identities) != own[:, None, None])
        sampling.add_sampled_ranks(1 + ahead.sum(2))


# -------------------------------------------------------------------------------------------------------
# Public op.
# -------------------------------------------------------------------------------------------------------
def evaluate_features(
    query_feats: Any,
    gallery_feats: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    metric: str = "euclidean",
    protocol: str = "market1501",
    max_rank: int = 50,
    chunk_size: int | None = None,
    progress: bool = False,
    group: Any = None,
    *,
    seed: int | None = 0,
    num_repeats: int = 10,
    rerank: Any = None,
) -> RankingResult:
    """CMC, mAP and mINP of query features against gallery features, without the (Q, G) distance matrix.

    query_feats (Q, D), gallery_feats (G, D): torch (CPU or CUDA), numpy or cupy arrays, float32/float16/
    bfloat16/float64, finite. Labels, metric, protocol, max_rank, seed and num_repeats as in rf.evaluate and
    rf.pairwise_distance: the result equals ``rf.evaluate(rf.pairwise_distance(query_feats, gallery_feats,
    metric), q_pids, g_pids, q_camids, g_camids, ...)`` (same CMC, mAP and mINP, skipped queries and warning).
    chunk_size: gallery items per block (default: about 32 MiB of distances per block on the host).
    progress: a tqdm bar over the gallery blocks. Memory O(Q * (matches + block)).
    group: a torch.distributed process group (torch.distributed.group.WORLD for the default one): every rank
    passes the same queries and its own shard of the gallery (ranks in order: rank 0's rows first; a shard
    may be empty) and gets the result of the whole gallery. The match distances are all_gather'ed, the
    rank counts all_reduce'd (gloo: host tensors; nccl: the current CUDA device). Without group nothing is
    gathered, even in an initialised job. The reference backend does not shard.
    rerank: dict(k1=.., k2=.., lambda_value=..) (missing keys: rf.re_ranking's defaults) evaluates the
    k-reciprocal re-ranked distances: the numbers of ``rf.evaluate(rf.re_ranking(query_feats, gallery_feats,
    k1, k2, lambda_value, metric), ...)``, without the (Q, G) matrix (ops/evaluate_features_rerank.py; native
    cpu backend, host features, no group=; chunk_size is then the re-ranking's rows per block).
    """
    if protocol not in _evaluation.PROTOCOLS:
        raise ValueError(f"protocol: expected one of {_evaluation.PROTOCOLS}, got {protocol!r}")
    num_repeats = _evaluation._check_positive_int("num_repeats", num_repeats)
    if chunk_size is not None:
        chunk_size = _evaluation._check_positive_int("chunk_size", chunk_size)
    inputs = _validate(query_feats, gallery_feats, q_pids, g_pids, q_camids, g_camids, metric, max_rank, group)
    if rerank is not None:
        from .evaluate_features_rerank import evaluate_reranked

        result = evaluate_reranked(inputs, rerank, protocol, seed, num_repeats, chunk_size, bool(progress))
    else:
        _, implementation = EVALUATE_FEATURES.select(inputs.query.device)
        result = implementation(inputs, protocol, seed, num_repeats, chunk_size, bool(progress))
    if result.num_skipped_queries:
        warnings.warn(
            f"{result.num_skipped_queries} of {inputs.query.shape[0]} queries have no valid gallery match (no gallery "
            "item of their pid outside their camera) and were skipped; the metrics average the other "
            f"{result.num_valid_queries}",
            stacklevel=2,
        )
    return result


# The cuda and triton backends live in their own modules and register themselves on EVALUATE_FEATURES
# (imported last: they use this module's pass machinery).
from . import evaluate_features_cuda  # noqa: E402,F401
from . import evaluate_features_triton  # noqa: E402,F401
