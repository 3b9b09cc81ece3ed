"""The native (cpu) re-ranking pipeline in passes, shared by the dense output, top-k and re-ranked evaluation.

Pass 1 (:meth:`NativeRerank.knn_pass`) runs over every row of the joint distance matrix: each row's k1+1
nearest items and its maximum squared distance (csrc/cpu/rerank.cpp: rerank_topk_block). The dense output
(`rf.re_ranking`) then fills the query rows with the normalised squared distances and blends in the Jaccard
distance (rerank_finish). Top-k and evaluation never hold (Q, G): rerank_overlap returns, per query, the few
gallery items sharing a k-reciprocal neighbour with it (Jaccard term explicit); every other item's score is
``(1 - lambda) + float32(float32(d^2) / row_max) * lambda``, a non-decreasing function of the distance d.
:meth:`NativeRerank.query_blocks` recomputes the query rows' distance blocks with the same kernel, the same
block boundaries and the same buffer as pass 1, so d is bit for bit the value the dense output starts from.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .. import _native
from ..reference import distance as reference_distance
from .distance import cpu_gemm_kernel, row_block_size

BLOCK_ELEMENTS = 1 << 22  # default block: 4M distances (16 MiB in float32) per pass-1 block


def _unit_stride(array: np.ndarray) -> np.ndarray:
    return array if array.shape[1] <= 1 or array.strides[1] == array.itemsize else np.ascontiguousarray(array)


def joint_distance_block(features: torch.Tensor, norms: torch.Tensor | None, start: int, stop: int, metric: str,
                         out: torch.Tensor, kernel: int | None) -> torch.Tensor:
    """Distances of rows start:stop of `features` (N, D) to all N rows, written into `out` (stop - start, N),
    with pairwise_distance's CPU semantics (row i's distance to itself exact, as for x against x)."""
    view = _native.view
    if kernel is None:  # BLAS GEMM + the native epilogue, which makes the self-distance exact itself
        torch.mm(features[start:stop], features.T, out=out)
        _native._C.distance_epilogue_cpu(view(out), view(norms[start:stop]), view(norms), _native.METRIC_CODES[metric],
                                         start)
        return out
    _native._C.fused_pairwise_distance_cpu(view(features[start:stop]), view(features), _native.METRIC_CODES[metric],
                                           False, view(out), kernel)
    if metric != "cosine":  # squared self-distance exactly 0 (NaN stays NaN), then the metric's clamp and root
        self_distance = out.diagonal(offset=start).mul_(0)
        if metric == "euclidean":
            self_distance.clamp_(min=reference_distance.EUCLIDEAN_CLAMP).sqrt_()
    return out


class NativeRerank:
    """One re-ranking problem on the native backend: `kind` "distances" with data (q_g, q_q, g_g) host
    arrays (float32, or all float64), or "features" with data (query, gallery, metric), float32 host arrays."""

    def __init__(self, kind: str, data: tuple, k1: int, chunk_size: int | None) -> None:
        self.kind = kind
        if kind == "distances":
            self.q_g, self.q_q, self.g_g = (_unit_stride(a) for a in data)
            self.num_query, self.num_gallery = self.q_g.shape
            self.metric = "euclidean"
            self.features = None
        else:
            query, gallery, self.metric = data
            self.num_query, self.num_gallery = query.shape[0], gallery.shape[0]
            self.features = torch.from_numpy(np.ascontiguousarray(np.concatenate([query, gallery], axis=0)))
            self.kernel = cpu_gemm_kernel(self.features.dtype)
            # the BLAS path's norms, once, not per block
            self.norms = (self.features * self.features).sum(1) if self.kernel is None else None
        self.num_all = self.num_query + self.num_gallery
        self.k1 = k1
        if chunk_size is not None:
            step = int(chunk_size)
        elif kind == "distances":
            step = max(1, BLOCK_ELEMENTS // self.num_all)
        else:
            # GEMM blocks of at least 256 rows: at N = 93,820, D = 512 a 44-row block ran at 109 GFLOPS, a
            # 256-row one at 130 (2 cores), and the top-k kernel shares 16-row tiles between threads.
            step = row_block_size(self.num_all, BLOCK_ELEMENTS)
        # Pass 1: row i of the published dist is column i of the joint matrix [[q_q, q_g], [q_g.T, g_g]];
        # blocks never straddle the query/gallery boundary.
        self.blocks = [(s, min(s + step, self.num_query)) for s in range(0, self.num_query, step)]
        self.blocks += [(s, min(s + step, self.num_all)) for s in range(self.num_query, self.num_all, step)]
        self.ranks = torch.empty((self.num_all, k1 + 1), dtype=torch.int64)
        self.row_max = torch.empty(self.num_all, dtype=torch.float32)
        # One GEMM output buffer for every block: a fresh one per block costs a page fault per 4 KiB (at
        # MSMT17 scale 9 million faults, ~37 s of system time).
        self.gram = (torch.empty((min(step, self.num_all), self.num_all), dtype=torch.float32)
                     if kind == "features" else None)

    def _block(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(left, right) of rows start:stop of the joint matrix: right the columns of the gallery."""
        if self.kind == "distances":  # transposed views, no copy: the kernel reads them along their columns
            if stop <= self.num_query:
                left, right = self.q_q[:, start:stop].T, self.q_g[start:stop]
            else:
                cols = slice(start - self.num_query, stop - self.num_query)
                left, right = self.q_g[:, cols].T, self.g_g[:, cols].T
            return torch.from_numpy(left), torch.from_numpy(right)
        block = joint_distance_block(self.features, self.norms, start, stop, self.metric, self.gram[: stop - start],
                                     self.kernel)
        return block[:, : self.num_query], block[:, self.num_query:]

    def knn_pass(self, on_query_block=None, tick=None) -> None:
        """Pass 1: ranks and row_max of every row; on_query_block(start, stop, right (rows, G) numpy) per
        block of query rows, while the block is at hand."""
        view = _native.view
        for start, stop in self.blocks:
            left, right = self._block(start, stop)
            _native._C.rerank_topk_block_cpu(view(left), view(right), self.k1 + 1, view(self.row_max[start:stop]),
                                             view(self.ranks[start:stop]))
            if on_query_block is not None and stop <= self.num_query:
                on_query_block(start, stop, right.numpy())
            if tick is not None:
                tick(stop - start)

    def query_blocks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """(start, stop, right) for the blocks of query rows after pass 1: right (rows, G) the same distances
        pass 1 saw (float32, or float64 distances), recomputed by the same kernel into the same buffer."""
        for start, stop in self.blocks:
            if stop <= self.num_query:
                yield start, stop, self.query_block(start, stop)

    def query_block(self, start: int, stop: int) -> np.ndarray:
        """The gallery distances of query rows start:stop, a block of pass 1 (see query_blocks)."""
        return self._block(start, stop)[1].numpy()

    def _sources(self) -> tuple:
        view, empty = _native.view, torch.empty(0, dtype=torch.float32)
        if self.kind == "distances":
            return (view(empty), _native.METRIC_CODES[self.metric],
                    *(view(torch.from_numpy(a)) for a in (self.q_g, self.q_q, self.g_g)))
        return (view(self.features), _native.METRIC_CODES[self.metric], view(empty), view(empty), view(empty))

    def finish_dense(self, k2: int, lambda_value: float, out: np.ndarray) -> None:
        """The Jaccard blend into out (Q, G) float32, which holds the normalised squared distances."""
        view = _native.view
        _native._C.rerank_finish_cpu(view(self.ranks), view(self.row_max), *self._sources(), self.num_query, self.k1,
                                     k2, lambda_value, view(torch.from_numpy(out)))

    def overlap(self, k2: int, lambda_value: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per query, its overlapping gallery items as CSR: offsets (Q + 1,) int64, index (E,) int32
        (increasing per row), term (E,) float32 (the Jaccard part of the re-ranked distance)."""
        view = _native.view
        return _native._C.rerank_overlap_cpu(view(self.ranks), view(self.row_max), *self._sources(), self.num_query,
                                             self.k1, k2, lambda_value)


def rerank_scores(distances: np.ndarray, row_max: np.ndarray, term: np.ndarray | float, lambda_value: float) -> np.ndarray:
    """term + float32(float32(d^2) / row_max) * lambda elementwise in float32, as the dense output computes it
    (np.square in d's dtype rounded to float32, then the float32 divide, multiply and add)."""
    square = np.square(distances).astype(np.float32, copy=False)
    original = square / np.asarray(row_max, dtype=np.float32)
    return np.asarray(term, dtype=np.float32) + original * np.float32(lambda_value)


def re_ranking_topk(problem: NativeRerank, k2: int, lambda_value: float, topk: int, tick=None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(values (Q, K) float32, indices (Q, K) int64): the top K of each re-ranked row, ascending, ties by
    gallery index, bit for bit the dense output's; O(N * k1 + Q * K + overlap) memory."""
    view = _native.view
    problem.knn_pass(tick=tick)
    offsets, index, term = problem.overlap(k2, lambda_value)
    values = torch.empty((problem.num_query, topk), dtype=torch.float32)
    indices = torch.empty((problem.num_query, topk), dtype=torch.int64)
    index_t, term_t, offsets_t = (torch.from_numpy(a) for a in (index, term, offsets))
    for start, stop, right in problem.query_blocks():
        _native._C.rerank_select_block_cpu(
            view(torch.from_numpy(right)), view(problem.row_max[start:stop]), lambda_value,
            view(offsets_t[start: stop + 1]), view(index_t), view(term_t), view(values[start:stop]),
            view(indices[start:stop]),
        )
    if tick is not None:
        tick(1)
    return values.numpy(), indices.numpy()
