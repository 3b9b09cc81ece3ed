"""k-reciprocal re-ranking from torch ops on the input's device: the ``torch`` backend of re_ranking.

The same exact algorithm as csrc/cpu/rerank.cpp (see reidfast/ops/rerank.py), vectorised over rows instead of
looping over them, so it runs wherever torch runs (CUDA tensors by default, CPU tensors when forced):

1. top-k pass, ``block_rows`` rows at a time: row i of the published ``dist`` (column i of the joint squared
   distance matrix over its maximum), its maximum, and its k1+1 first items by (value, item index). The
   order is exact: each value's float32 bits (non-negative, so ordered like the value) go in the high half
   of an int64 key and the item index in the low half, and ``torch.topk`` on the keys breaks ties by index.
   From features the block comes from the device's pairwise_distance kernel (cuda/triton on GPU).
2. k-reciprocal sets R(i, k) as (rows, k+1) masks over the top-k lists; expansion by R(c, round(k1/2)) with
   the 2/3 overlap rule (membership by ``searchsorted`` in the sorted R(i, k1)); unique items per row by a
   sort; exp(-d) weights normalised per row, stored as CSR-like rows (crow, col, val).
3. query expansion: the rows of the k2 first items concatenated, equal columns summed in rank order
   (a dense (entries, k2) table added column by column: the published float32 summation order).
4. Jaccard for query rows: an inverted index (column -> gallery items, values) of the gallery rows; every
   (query entry, gallery entry) pair sharing a column adds min(v, w) into the query's output row
   (``index_add_``); then 1 - s / (2 - s), blended with the normalised distance.

Every stage works on row chunks sized so that no temporary exceeds ``block_elements`` elements (times a
small constant), so peak memory is O(N*k1 + Q*G + block). Results equal the reference up to float32
rounding: the per-row weight sums and (on CUDA) the atomic Jaccard sums add in a different order than
numpy, which moves results by a few ulps (measured in tests/test_rerank.py), never the neighbour sets.
"""
from __future__ import annotations

import bisect
import math
from typing import Callable, Sequence

import torch

_INDEX_BITS = 32  # low half of a top-k key: the item index (N < 2^31, checked in re_ranking)


def _exclusive_cumsum(counts: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(counts, 0) - counts


def _expand_ranges(starts: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ranges [starts[e], starts[e] + counts[e]): (owner e of every position, the position), concatenated."""
    total = int(counts.sum())
    owner = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts, output_size=total)
    offset = torch.arange(total, device=counts.device) - _exclusive_cumsum(counts)[owner]
    return owner, starts[owner] + offset


class _DistanceRows:
    """Row i of the published normalised squared distance, from the three given distance matrices."""

    def __init__(self, q_g: torch.Tensor, q_q: torch.Tensor, g_g: torch.Tensor) -> None:
        self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
        self.row_max: torch.Tensor | None = None  # (N,), set after the top-k pass
        self.num_query, self.num_gallery = q_g.shape

    def block(self, start: int, stop: int) -> torch.Tensor:
        """(stop - start, N) float32: column i of joint^2 for i in [start, stop); blocks stay on one side."""
        q = self.num_query
        if stop <= q:
            parts = (self.q_q[:, start:stop].T, self.q_g[start:stop])
        else:
            cols = slice(start - q, stop - q)
            parts = (self.q_g[:, cols].T, self.g_g[:, cols].T)
        joint = torch.cat(parts, dim=1)
        return (joint * joint).to(torch.float32)  # squared in the input precision, then float32, as published

    def pair_distance(self, rows: torch.Tensor, items: torch.Tensor, valid: torch.Tensor, cache: tuple) -> torch.Tensor:
        """(rows, m) float32: joint[items, rows]^2 / row_max[rows], looked up in the given matrices."""
        q = self.num_query
        rows, items = torch.broadcast_tensors(rows, items)
        row_q, row_g = rows.clamp(max=q - 1), (rows - q).clamp(min=0)
        item_q, item_g = items.clamp(max=q - 1), (items - q).clamp(min=0)
        row_is_query, item_is_query = rows < q, items < q
        value = torch.where(
            item_is_query,
            torch.where(row_is_query, self.q_q[item_q, row_q], self.q_g[item_q, row_g]),
            torch.where(row_is_query, self.q_g[row_q, item_g], self.g_g[item_g, row_g]),
        )
        return (value * value).to(torch.float32) / self.row_max[rows]


class _FeatureRows:
    """Row i of the published normalised squared distance, computed from the (N, D) features."""

    def __init__(self, features: torch.Tensor, metric: str, distance_block: Callable) -> None:
        self.features, self.metric, self.distance_block = features, metric, distance_block
        self.pair_budget = 1 << 22  # float64 elements gathered per recomputation chunk (set by re_ranking)
        self.row_max: torch.Tensor | None = None  # (N,), set after the top-k pass

    def block(self, start: int, stop: int) -> torch.Tensor:
        distances = self.distance_block(self.features[start:stop], self.features, self.metric)
        if self.metric != "cosine":  # a row's distance to itself is exact, as the cpu backend makes it
            distances.diagonal(offset=start).fill_(math.sqrt(1e-12) if self.metric == "euclidean" else 0.0)
        return distances.square_()

    def pair_distance(self, rows: torch.Tensor, items: torch.Tensor, valid: torch.Tensor, cache: tuple) -> torch.Tensor:
        """(rows, m) float32 normalised squared distances: the top-k pass's value where the pair is in the
        row's top-k list, else recomputed with a float64 dot product (as the cpu backend does);
        ``cache`` = (each row's top-k items sorted by item, their normalised values)."""
        sorted_items, sorted_values = cache
        rows, items = torch.broadcast_tensors(rows, items)
        position = torch.searchsorted(sorted_items, items.contiguous()).clamp_(max=sorted_items.shape[1] - 1)
        result = sorted_values.gather(1, position)
        miss_rows, miss_cols = (valid & (sorted_items.gather(1, position) != items)).nonzero(as_tuple=True)
        step = max(1, self.pair_budget // (4 * max(1, self.features.shape[1])))  # ~4 float64 (pairs, D) temporaries
        for begin in range(0, miss_rows.numel(), step):
            r, c = miss_rows[begin:begin + step], miss_cols[begin:begin + step]
            a = rows[r, c]
            result[r, c] = self._squared_pairs(a, items[r, c]) / self.row_max[a]
        return result

    def _squared_pairs(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """d(a, b)^2 in float32 for item pairs, from float64 dot products and norms (rounded once to float32)."""
        x, y = self.features[a].double(), self.features[b].double()
        dot, x_norm, y_norm = (x * y).sum(1), (x * x).sum(1), (y * y).sum(1)
        if self.metric == "cosine":
            eps = 1e-12
            distance = (1.0 - dot / (x_norm.sqrt().clamp_min(eps) * y_norm.sqrt().clamp_min(eps))).to(torch.float32)
        elif self.metric == "sqeuclidean":
            squared = (x_norm + y_norm - 2.0 * dot).clamp_min(0.0)
            distance = torch.where(a == b, torch.zeros_like(squared), squared).to(torch.float32)
        else:
            squared = (x_norm + y_norm - 2.0 * dot).clamp_min(1e-12)
            squared = torch.where(a == b, torch.full_like(squared, 1e-12), squared)
            distance = squared.sqrt().to(torch.float32)
        return distance * distance


def _blocks(num_query: int, num_all: int, step: int) -> list[tuple[int, int]]:
    """Row blocks of at most `step` rows that never straddle the query/gallery boundary."""
    blocks = [(s, min(s + step, num_query)) for s in range(0, num_query, step)]
    return blocks + [(s, min(s + step, num_all)) for s in range(num_query, num_all, step)]


def _topk_pass(source, num_query: int, num_all: int, width: int, block_rows: int, out: torch.Tensor | None, tick,
               device: torch.device):
    """(ranks (N, width) int64, their normalised squared values (N, width), row maxima (N,)); fills out (if
    not None) with the normalised squared query-gallery distance."""
    ranks = torch.empty((num_all, width), dtype=torch.int64, device=device)
    top_values = torch.empty((num_all, width), dtype=torch.float32, device=device)
    row_max = torch.empty(num_all, dtype=torch.float32, device=device)
    columns = torch.arange(num_all, dtype=torch.int64, device=device)
    low_mask = (1 << _INDEX_BITS) - 1
    for start, stop in _blocks(num_query, num_all, block_rows):
        squared = source.block(start, stop)
        maxima = squared.amax(1)
        maxima = torch.where(maxima == 0, torch.ones_like(maxima), maxima)  # an all-zero column stays zero
        row_max[start:stop] = maxima
        normalised = squared.div_(maxima[:, None])
        if stop <= num_query and out is not None:  # None: top-k, the query rows are recomputed
            out[start:stop] = normalised[:, num_query:]
        keys = normalised.view(torch.int32).to(torch.int64)  # non-negative floats: bits ordered like values
        del squared, normalised
        keys.bitwise_left_shift_(_INDEX_BITS).bitwise_or_(columns)
        top = torch.topk(keys, width, dim=1, largest=False, sorted=True).values
        del keys
        ranks[start:stop] = top.bitwise_and(low_mask)
        top_values[start:stop] = top.bitwise_right_shift(_INDEX_BITS).to(torch.int32).view(torch.float32)
        tick(stop - start)
    return ranks, top_values, row_max


def _reciprocal_mask(ranks: torch.Tensor, k: int, start: int, stop: int) -> torch.Tensor:
    """(stop - start, k+1) bool: the item at position a of row i's k+1 first is in R(i, k), i.e. has i among
    its own k+1 first."""
    first = ranks[:, : k + 1]
    backward = first[first[start:stop]]  # (rows, k+1, k+1)
    rows = torch.arange(start, stop, device=ranks.device)
    return (backward == rows[:, None, None]).any(-1)


def _row_chunks(num_rows: int, per_row: int, budget: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of about budget / per_row rows (at least one)."""
    step = max(1, budget // max(1, per_row))
    return [(s, min(s + step, num_rows)) for s in range(0, num_rows, step)]


def _weights(source, ranks: torch.Tensor, top_values: torch.Tensor, k1: int, budget: int, tick):
    """Steps 3-5: CSR (crow (N+1), col, val) of the expanded k-reciprocal sets' exp(-d) weights, normalised."""
    num_all, width = ranks.shape
    device = ranks.device
    half = int(round(k1 / 2.0))  # Python rounds half to even, like np.around: 1 -> 0, 5 -> 2, 21 -> 10
    chunks = _row_chunks(num_all, (half + 1) ** 2, budget)
    half_mask = torch.cat([_reciprocal_mask(ranks, half, start, stop) for start, stop in chunks])
    half_size = half_mask.sum(1)
    half_items = ranks[:, : half + 1]
    sentinel = num_all
    counts, cols, vals = [], [], []
    span = width * (half + 2)  # R(i, k1) plus the h+1 first of each of its items
    for start, stop in _row_chunks(num_all, width * width + 4 * span, budget):
        rows = torch.arange(start, stop, device=device)
        forward = ranks[start:stop]
        in_reciprocal = _reciprocal_mask(ranks, k1, start, stop)
        members = torch.where(in_reciprocal, forward, sentinel)
        sorted_members = members.sort(1).values
        candidate_items = half_items[forward]  # (rows, width, half+1): the h+1 first of each item
        candidate_mask = half_mask[forward]
        flat = candidate_items.reshape(len(rows), -1)
        position = torch.searchsorted(sorted_members, flat).clamp_(max=width - 1)
        in_members = (sorted_members.gather(1, position) == flat).view_as(candidate_mask)
        overlap = (in_members & candidate_mask).sum(-1)
        # the published test, in float64: overlap > 2/3 * |R(c, h)|
        accepted = in_reciprocal & (overlap.double() > (2.0 / 3.0) * half_size[forward].double())
        extra = torch.where(accepted[..., None] & candidate_mask, candidate_items, sentinel)
        items = torch.cat([members, extra.reshape(len(rows), -1)], dim=1).sort(1).values
        repeated = torch.zeros_like(items, dtype=torch.bool)
        repeated[:, 1:] = items[:, 1:] == items[:, :-1]
        items = torch.where(repeated, sentinel, items).sort(1).values  # unique items first, increasing
        valid = items < sentinel
        row_counts = valid.sum(1)
        items = items[:, : max(1, int(row_counts.max()))]
        valid = valid[:, : items.shape[1]]
        safe_items = torch.where(valid, items, 0)
        cached_items, order = forward.sort(1)
        cache = (cached_items, top_values[start:stop].gather(1, order))
        distance = source.pair_distance(rows[:, None], safe_items, valid, cache)
        weight = torch.where(valid, torch.exp(-distance), 0.0)
        total = weight.sum(1, keepdim=True)
        weight = torch.where(valid, weight / torch.where(total > 0, total, 1.0), 0.0)
        counts.append(row_counts)
        cols.append(items[valid])
        vals.append(weight[valid])
        tick(stop - start)
    return _csr(torch.cat(counts), torch.cat(cols), torch.cat(vals))


def _csr(counts: torch.Tensor, col: torch.Tensor, val: torch.Tensor):
    crow = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=counts.device)
    torch.cumsum(counts, 0, out=crow[1:])
    return crow, col, val


def _query_expansion(csr, ranks: torch.Tensor, k2: int, budget: int):
    """Step 6: row i becomes the mean of the rows of its k2 first items, summed in rank order."""
    crow, col, val = csr
    num_all = ranks.shape[0]
    device = ranks.device
    lengths = crow[1:] - crow[:-1]
    per_row = max(1, int(lengths.max())) * k2  # entries gathered per row, at most
    counts, cols, vals = [], [], []
    for start, stop in _row_chunks(num_all, per_row * 4, budget):
        sources = ranks[start:stop, :k2].reshape(-1)  # (rows * k2), rank order within a row
        owner, position = _expand_ranges(crow[sources], lengths[sources])
        local_row, rank_position = owner // k2, owner % k2
        key = local_row * num_all + col[position]
        key, order = torch.sort(key)
        unique_keys, segment = torch.unique_consecutive(key, return_inverse=True)
        table = torch.zeros((unique_keys.numel(), k2), dtype=val.dtype, device=device)
        table[segment, rank_position[order]] = val[position][order]
        total = table[:, 0].clone()
        for a in range(1, k2):  # numpy's mean over axis 0 adds the k2 rows one after another
            total += table[:, a]
        counts.append(torch.bincount(unique_keys // num_all, minlength=stop - start))
        cols.append(unique_keys % num_all)
        vals.append(total / k2)
    return _csr(torch.cat(counts), torch.cat(cols), torch.cat(vals))


def gallery_inverted_index(csr, num_query: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gallery rows of the CSR (rows num_query..N-1) by column: column j's entries are
    [column_start[j], column_start[j + 1]) of (index_item: gallery item, increasing; index_val)."""
    crow, col, val = csr
    num_all = crow.numel() - 1
    begin = int(crow[num_query])
    gallery_col = col[begin:]
    gallery_item = torch.repeat_interleave(
        torch.arange(num_all - num_query, device=col.device), crow[num_query + 1:] - crow[num_query:-1],
        output_size=gallery_col.numel(),
    )
    gallery_col, order = torch.sort(gallery_col, stable=True)
    column_start = torch.zeros(num_all + 1, dtype=torch.int64, device=col.device)
    torch.cumsum(torch.bincount(gallery_col, minlength=num_all), 0, out=column_start[1:])
    return column_start, gallery_item[order], val[begin:][order]


class _QueryOverlap:
    """Steps 7's sums for chunks of query rows: shared[q, g] = sum_j min(V[q, j], V[g, j]) (index_add_ in the
    query entries' order) through the gallery rows' inverted index, chunks bounded by their (query entry,
    gallery entry) pairs and their (rows, G) output."""

    def __init__(self, csr, num_query: int, num_gallery: int, budget: int) -> None:
        crow, col, val = csr
        self.col, self.val, self.num_gallery, self.budget = col, val, num_gallery, budget
        begin = int(crow[num_query])
        self.column_start, self.index_item, self.index_val = gallery_inverted_index(csr, num_query)
        self.column_count = self.column_start[1:] - self.column_start[:-1]
        device = col.device
        query_lengths = crow[1:num_query + 1] - crow[:num_query]
        self.entry_row = torch.repeat_interleave(torch.arange(num_query, device=device), query_lengths,
                                                 output_size=begin)
        pairs_per_query = torch.zeros(num_query, dtype=torch.int64, device=device)
        pairs_per_query.index_add_(0, self.entry_row, self.column_count[col[:begin]])
        self.cumulative = torch.cumsum(pairs_per_query, 0).tolist()
        self.query_crow = crow[: num_query + 1].tolist()  # one transfer instead of two per chunk
        self.max_rows = max(1, budget // max(1, num_gallery))

    def chunks(self, row_start: int, row_stop: int):
        """(start, stop, shared (stop - start, G) float32) for consecutive chunks of rows [row_start, row_stop)."""
        start = row_start
        while start < row_stop:
            before = self.cumulative[start - 1] if start else 0
            fits = bisect.bisect_right(self.cumulative, before + self.budget, lo=start)  # rows [start, fits) fit
            stop = min(row_stop, max(start + 1, min(fits, start + self.max_rows)))
            first, last = self.query_crow[start], self.query_crow[stop]
            entry_col, entry_val = self.col[first:last], self.val[first:last]
            owner, position = _expand_ranges(self.column_start[entry_col], self.column_count[entry_col])
            contribution = torch.minimum(entry_val[owner], self.index_val[position])
            target = (self.entry_row[first:last][owner] - start) * self.num_gallery + self.index_item[position]
            shared = torch.zeros((stop - start) * self.num_gallery, dtype=torch.float32, device=self.col.device)
            shared.index_add_(0, target, contribution)
            yield start, stop, shared.view(stop - start, self.num_gallery)
            start = stop


def _blend(shared: torch.Tensor, normalised: torch.Tensor, lambda_value: float) -> torch.Tensor:
    """Step 8: jaccard * (1 - lambda) + normalised distance * lambda."""
    jaccard = 1.0 - shared / (2.0 - shared)
    return jaccard * (1.0 - lambda_value) + normalised * lambda_value


def _jaccard(csr, num_query: int, lambda_value: float, budget: int, out: torch.Tensor, tick) -> None:
    """Steps 7-8 in place on out (holding the normalised distance): jaccard*(1-lambda) + out*lambda."""
    for start, stop, shared in _QueryOverlap(csr, num_query, out.shape[1], budget).chunks(0, num_query):
        out[start:stop] = _blend(shared, out[start:stop], lambda_value)
        tick(stop - start)


def _jaccard_topk(csr, source, num_query: int, num_gallery: int, step: int, lambda_value: float, budget: int,
                  topk: int, tick) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 7-8 without the (Q, G) output: per block of the top-k pass (its distances recomputed the same
    way), the blended rows' `topk` smallest (stable sort: ties by gallery index)."""
    device = source.row_max.device
    values = torch.empty((num_query, topk), dtype=torch.float32, device=device)
    indices = torch.empty((num_query, topk), dtype=torch.int64, device=device)
    overlap = _QueryOverlap(csr, num_query, num_gallery, budget)
    for block_start, block_stop in _blocks(num_query, num_query + num_gallery, step):
        if block_stop > num_query:
            break
        normalised = source.block(block_start, block_stop).div_(source.row_max[block_start:block_stop, None])
        normalised = normalised[:, num_query:]
        for start, stop, shared in overlap.chunks(block_start, block_stop):
            final = _blend(shared, normalised[start - block_start: stop - block_start], lambda_value)
            ordered, order = torch.sort(final, dim=1, stable=True)
            values[start:stop], indices[start:stop] = ordered[:, :topk], order[:, :topk]
            tick(stop - start)
    return values, indices


def re_ranking(
    kind: str,
    data: Sequence,
    k1: int,
    k2: int,
    lambda_value: float,
    block_rows: int | None,
    distance_block: Callable | None = None,
    progress: Callable[[int], None] | None = None,
    block_elements: int = 1 << 22,
    jaccard: Callable | None = None,
    topk: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(Q, G) float32 re-ranked distances on the inputs' device.

    kind "distances": data = (q_g (Q, G), q_q (Q, Q), g_g (G, G)), all float32 or all float64.
    kind "features": data = (query (Q, D), gallery (G, D), metric), float32; distance_block(x, y, metric)
    computes a (rows, N) float32 distance block on the device.
    block_rows: rows per top-k block (None: block_elements // N); the sparse stages use chunks of about
    block_rows * N elements. progress(n) is called with the number of rows each stage finishes.
    jaccard(csr, num_query, lambda_value, budget, out, tick): steps 7-8 in place on out (default: torch ops,
    whose index_add_ is atomic on CUDA; the cuda backend passes its deterministic kernel).
    topk: return (values (Q, topk) float32, indices (Q, topk) int64), each row's smallest re-ranked
    distances (ties by index), without the (Q, G) output: the query rows' distance blocks are recomputed.
    """
    tick = progress or (lambda _: None)
    device = data[0].device
    if kind == "distances":
        num_query, num_gallery = data[0].shape
        source = _DistanceRows(*data)
    else:
        query, gallery, metric = data
        num_query, num_gallery = query.shape[0], gallery.shape[0]
        source = _FeatureRows(torch.cat([query, gallery]).contiguous(), metric, distance_block)
    num_all = num_query + num_gallery
    if num_all >= 1 << 31:
        raise ValueError(f"re-ranking supports fewer than 2^31 items (queries plus gallery), got {num_all}")
    if num_query == 0 or num_gallery == 0:
        return torch.empty((num_query, num_gallery), dtype=torch.float32, device=device)
    out = None if topk else torch.empty((num_query, num_gallery), dtype=torch.float32, device=device)
    step = block_rows if block_rows is not None else max(1, block_elements // num_all)
    budget = step * num_all
    if isinstance(source, _FeatureRows):
        source.pair_budget = budget
    ranks, top_values, row_max = _topk_pass(source, num_query, num_all, k1 + 1, step, out, tick, device)
    source.row_max = row_max
    csr = _weights(source, ranks, top_values, k1, budget, tick)
    if k2 != 1:
        csr = _query_expansion(csr, ranks, k2, budget)
    del ranks, top_values
    if topk:
        return _jaccard_topk(csr, source, num_query, num_gallery, step, lambda_value, budget, topk, tick)
    (jaccard or _jaccard)(csr, num_query, lambda_value, budget, out, tick)
    return out
