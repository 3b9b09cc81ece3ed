"""Re-ranked evaluation straight from features: the numbers of ``rf.evaluate(rf.re_ranking(qf, gf, k1, k2,
lambda_value, metric), ...)`` without the (Q, G) re-ranked matrix.

After k-reciprocal re-ranking (ops/rerank_sparse.py), query q's score for gallery item g is
``term + float32(float32(d^2) / row_max[q]) * lambda`` with term = 1 - lambda for every item that shares no
k-reciprocal neighbour with q, and an explicit Jaccard term for the few that do (the overlap lists). So:

  1. the k-NN pass over all N = Q + G rows (ranks, row maxima), then the overlap lists;
  2. pivots: each query's correct matches with their re-ranked scores (the distances from the query rows'
     blocks, recomputed by pass 1's kernel: bit for bit the dense output's), sorted by (score, index);
  3. counting: per block of query rows, csrc/cpu/rank_count.cpp with the score transform counts every item
     as if it had no overlap; then per query a sparse correction (rank_count_overlap_correct) moves each
     overlapping item (other pid) from the slot of that score to the slot of its true score;
  4. CMC, mAP, mINP and CUHK03 draws as evaluate_features (ops/evaluate_features.py: _evaluate_with).
Memory O(N * k1 + overlap + Q * matches + block); distance work: the k-NN pass plus the query rows once
more (pivots and Market-1501 counts in one pass; CUHK03 adds a pass per block of sampled queries).
Not sharded (group=): the k-NN graph couples every gallery item with every other, across shards.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from .. import _native
from .._checks import check_rerank_parameters
from . import evaluate_features as _features
from .rerank import RE_RANKING
from .rerank_sparse import NativeRerank, rerank_scores

RERANK_KEYS = {"k1": 20, "k2": 6, "lambda_value": 0.3}  # rf.re_ranking's defaults


def check_rerank(rerank: Any, num_all: int) -> tuple[int, int, float]:
    """(k1, k2, lambda_value) from the `rerank` mapping (missing keys: rf.re_ranking's defaults)."""
    if not isinstance(rerank, Mapping):
        raise ValueError(f"rerank: expected a dict with keys among {sorted(RERANK_KEYS)} or None, got {rerank!r}")
    unknown = sorted(set(rerank) - set(RERANK_KEYS))
    if unknown:
        raise ValueError(f"rerank: unknown key(s) {unknown}; expected keys among {sorted(RERANK_KEYS)}")
    params = {**RERANK_KEYS, **rerank}
    return check_rerank_parameters(params["k1"], params["k2"], params["lambda_value"], num_all)


class _RerankPass:
    """The counting pass over re-ranked scores (the `pass_` of evaluate_features' _evaluate_with)."""

    name = "cpu"

    def __init__(self, problem: NativeRerank, inputs, k2: int, lambda_value: float, progress: bool) -> None:
        self.problem, self.inputs, self.lambda_value = problem, inputs, lambda_value
        self.keep, self.blend = np.float32(1.0 - lambda_value), np.float32(lambda_value)
        self.progress = progress
        problem.knn_pass()
        self.overlap_offsets, self.overlap_index, self.overlap_term = problem.overlap(k2, lambda_value)

    def _blocks(self, rows: np.ndarray):
        """(positions a:b in rows, the rows' distances (len, G)) per block of query rows holding some of `rows`
        (increasing)."""
        problem = self.problem
        wanted = [(start, stop) for start, stop in problem.blocks if stop <= problem.num_query
                  and np.searchsorted(rows, start) < np.searchsorted(rows, stop)]
        if self.progress:
            from tqdm.auto import tqdm

            wanted = tqdm(wanted, desc="evaluate_features (re-ranked)", unit="block")
        for start, stop in wanted:
            right = torch.from_numpy(problem.query_block(start, stop))
            a, b = np.searchsorted(rows, start), np.searchsorted(rows, stop)
            local = rows[a:b] - start
            yield a, b, right if local.size == stop - start else right[torch.from_numpy(local)]

    def _terms(self, start: int, stop: int, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        """The Jaccard term of pairs (query[s], gallery[s]), queries in [start, stop): explicit on the overlap
        lists, else 1 - lambda."""
        terms = np.full(query.size, self.keep, dtype=np.float32)
        first, last = self.overlap_offsets[start], self.overlap_offsets[stop]
        if first == last:
            return terms
        # keys (q - start) * G + g of the rows' entries: increasing (rows in order, items increasing per row)
        counts = np.diff(self.overlap_offsets[start: stop + 1])
        keys = np.repeat(np.arange(stop - start, dtype=np.int64), counts) * self.problem.num_gallery
        keys += self.overlap_index[first:last]
        wanted = (query - start).astype(np.int64) * self.problem.num_gallery + gallery
        at = np.minimum(np.searchsorted(keys, wanted), keys.size - 1)
        found = keys[at] == wanted
        terms[found] = self.overlap_term[first + at[found]]
        return terms

    def pivots(self) -> "_features._Pivots":
        """Each query's correct matches (its pid, another camera) with their re-ranked scores, sorted by
        (score, index); the Market-1501 histogram of every query is counted in the same pass (kept for the
        first histogram() call over all queries)."""
        labels = self.inputs.labels
        num_query = self.problem.num_query
        query, gallery = _features._own_pid_pairs(labels)
        junk = labels.g_camids.numpy()[gallery] == labels.q_camids.numpy()[query]
        num_junk = np.bincount(query[junk], minlength=num_query)
        query, gallery = query[~junk], gallery[~junk]  # grouped by query
        pair_offsets = np.r_[0, np.cumsum(np.bincount(query, minlength=num_query))]
        score, index = np.empty(query.size, dtype=np.float32), np.empty(query.size, dtype=np.int64)
        histogram = torch.zeros(query.size, dtype=torch.int64)
        row_max = self.problem.row_max.numpy()
        nan_count = 0
        for a, b, distances in self._blocks(np.arange(num_query)):
            pairs = slice(pair_offsets[a], pair_offsets[b])  # the block's rows' pairs
            d = distances.numpy()[query[pairs] - a, gallery[pairs]]
            block_score = rerank_scores(d, row_max[query[pairs]], self._terms(a, b, query[pairs], gallery[pairs]),
                                        self.lambda_value)
            order = np.lexsort((gallery[pairs], block_score, query[pairs]))  # (score, index) per query; -0.0 == +0.0
            score[pairs], index[pairs] = block_score[order], gallery[pairs][order]
            nan_count += self._count_block(distances, np.arange(a, b), pair_offsets[a: b + 1], score, index, None, 1,
                                           histogram)
        if np.isnan(score).any():
            _features._raise_nan(int(np.isnan(score).sum()))
        self._histogram_of_all = (index, _features._finish_histogram(self.inputs, histogram.numpy(), nan_count))
        return _features._Pivots(offsets=pair_offsets, index=index, distance=score, num_junk=num_junk)

    def histogram(self, rows: np.ndarray, pivot_offsets: np.ndarray, pivot_score: np.ndarray,
                  pivot_index: np.ndarray, groups: torch.Tensor | None, num_groups: int, chunk_size, progress
                  ) -> np.ndarray:
        """(P * num_groups,) int64 slot histogram of the query rows `rows` (increasing) by re-ranked score."""
        counted = getattr(self, "_histogram_of_all", None)
        if counted is not None and counted[0] is pivot_index and groups is None and rows.size == self.problem.num_query:
            self._histogram_of_all = None
            return counted[1]  # counted while the pivots were scored
        histogram = torch.zeros(pivot_index.size * num_groups, dtype=torch.int64)
        nan_count = 0
        for a, b, distances in self._blocks(rows):
            nan_count += self._count_block(distances, rows[a:b], pivot_offsets[a: b + 1], pivot_score, pivot_index,
                                           groups, num_groups, histogram)
        return _features._finish_histogram(self.inputs, histogram.numpy(), nan_count)

    def _count_block(self, distances: torch.Tensor, rows: np.ndarray, pivot_offsets: np.ndarray,
                     pivot_score: np.ndarray, pivot_index: np.ndarray, groups, num_groups: int,
                     histogram: torch.Tensor) -> int:
        """Adds the query rows `rows` (their distances (len, G)) to the histogram; returns the NaN count."""
        view, C = _native.view, _native._C
        pivots = [view(torch.from_numpy(np.ascontiguousarray(a))) for a in (pivot_offsets, pivot_score, pivot_index)]
        block_rows = torch.from_numpy(rows)
        labels = (view(self.inputs.labels.q_pids[block_rows]), view(self.inputs.labels.g_pids))
        group_view = None if groups is None else view(groups)
        row_max = view(self.problem.row_max[block_rows].contiguous())
        keep, blend = float(self.keep), float(self.blend)
        nan_count = C.rank_count_block_cpu(view(distances), 0, *pivots, *labels, group_view, num_groups,
                                           view(histogram), row_max, keep, blend)
        # the overlapping items: from the slot of their score without overlap to that of their true score
        C.rank_count_overlap_correct_cpu(view(distances), *pivots, *labels, group_view, num_groups, row_max, keep,
                                         blend, *(view(t) for t in self._overlap_rows(rows)), view(histogram))
        return nan_count

    def _overlap_rows(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The overlap lists of `rows` (increasing) as CSR (offsets (len + 1,), index, term): views when the
        rows are consecutive, else gathered."""
        if rows[-1] - rows[0] + 1 == rows.size:
            offsets = self.overlap_offsets[rows[0]: rows[-1] + 2]
            return tuple(torch.from_numpy(a) for a in (offsets, self.overlap_index, self.overlap_term))
        starts, counts = self.overlap_offsets[rows], np.diff(self.overlap_offsets)[rows]
        entry = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
        return tuple(torch.from_numpy(a) for a in (offsets, self.overlap_index[entry], self.overlap_term[entry]))


def evaluate_reranked(inputs, rerank: Any, protocol: str, seed: Any, num_repeats: int, chunk_size, progress):
    """evaluate_features with rerank=: see the module docstring."""
    if inputs.shard is not None:
        raise ValueError(
            "rerank: not supported with group=: re-ranking needs the k-NN graph over all items, and each gallery "
            "item's neighbour list spans every shard; evaluate re-ranked on one process"
        )
    k1, k2, lambda_value = check_rerank(rerank, inputs.query.shape[0] + inputs.gallery.shape[0])
    backend, _ = RE_RANKING.select(inputs.query.device)
    if backend != "cpu":
        raise ValueError(
            f"rerank: re-ranked evaluation runs on the native cpu backend only, got the {backend!r} re-ranking "
            "backend for these inputs; pass host (numpy or CPU torch) features"
        )
    query = np.ascontiguousarray(inputs.query.float().numpy())  # as rf.re_ranking: float32 features
    gallery = np.ascontiguousarray(inputs.gallery.float().numpy())
    with torch.no_grad():
        problem = NativeRerank("features", (query, gallery, inputs.metric), k1, chunk_size)
        pass_ = _RerankPass(problem, inputs, k2, lambda_value, progress)
        return _features._evaluate_with(pass_, inputs, protocol, seed, num_repeats, None, progress,
                                        pivots=pass_.pivots())
