"""Re-ID ranking evaluation (CMC, mAP, mINP): argument checks, array conversion, backend dispatch.

Semantics are those of reidfast/reference/evaluation.py (torchreid ``eval_market1501`` / ``eval_cuhk03``,
mINP as in fast-reid), and the backends agree with it exactly: same CMC, and the same float64 mAP and
mINP bit for bit.

Backends (both run on the host):
    cpu        C++/OpenMP over queries (csrc/cpu/evaluate.cpp). No row is sorted: each query's correct
               matches are ranked by counting the valid gallery items before them (O(k) scratch memory
               per thread for k matches); float64 AP summed in numpy's pairwise order.
    reference  the numpy evaluator (a stable argsort per query).
The cpu backend reads a float32/float64 host distmat in place (any row stride). Any other distmat is
copied in blocks of rows (about 64 MiB each): a CUDA one to the host (a GPU kernel is later work), a
float16/bfloat16 one widened to float32, an integer one to float64, so no copy of the whole matrix is
made. The reference backend takes the whole matrix to the host as numpy. The CUHK03 protocol runs the
reference's sampling on both backends for now (its seeded draws need each identity's images in ranking
order); its results say backend="reference".
"""
from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import _native
from .._arrays import as_tensor
from .._dispatch import Op
from ..reference import evaluation as reference

EVALUATE = Op("evaluate")
PROTOCOLS = ("market1501", "cuhk03")
PROTOCOL_NAMES = {"market1501": "Market-1501", "cuhk03": "CUHK03 single-shot"}
COPY_BLOCK_BYTES = 64 << 20  # host memory per block of distmat rows copied (from the GPU, or to widen)
_NAN_CHECK_BLOCK_ELEMENTS = 1 << 24  # a 16 MiB boolean temporary at most
_EXACT_FLOAT64_INTEGERS = 2**53  # integer distances up to this magnitude convert to float64 exactly


@dataclass(frozen=True, eq=False)
class RankingResult:
    """Ranking metrics averaged over the valid queries.

    cmc: float32 (max_rank,), cmc[k-1] = fraction of valid queries with a correct match in the top k
    (max_rank is cut to num_gallery when the gallery is smaller). mAP, mINP: float in [0, 1].
    A query is valid when a gallery item of its pid remains after removing its pid's same-camera items.
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int
    num_skipped_queries: int
    num_gallery: int
    protocol: str = "market1501"
    backend: str = "reference"

    def cmc_at(self, k: int) -> float:
        """CMC at rank k (1-based); nan when k is past max_rank, 1.0 past the end of a fully ranked gallery."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if k <= self.cmc.size:
            return float(self.cmc[k - 1])
        # Every valid query's first match lies within the gallery, so the CMC is 1 past its end.
        return float(self.cmc[-1]) if self.cmc.size == self.num_gallery else math.nan

    @property
    def rank1(self) -> float:
        return self.cmc_at(1)

    @property
    def rank5(self) -> float:
        return self.cmc_at(5)

    @property
    def rank10(self) -> float:
        return self.cmc_at(10)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (JSON-ready): mAP, mINP, rank1/5/10, cmc list, query counts, protocol, backend."""
        return {
            "mAP": self.mAP,
            "mINP": self.mINP,
            "rank1": self.rank1,
            "rank5": self.rank5,
            "rank10": self.rank10,
            "cmc": [float(v) for v in self.cmc],
            "num_valid_queries": self.num_valid_queries,
            "num_skipped_queries": self.num_skipped_queries,
            "num_gallery": self.num_gallery,
            "protocol": self.protocol,
            "backend": self.backend,
        }

    def summary(self, title: str | None = None) -> str:
        """A small text table of mAP, mINP and CMC at ranks 1, 5, 10 and 20, in percent."""
        title = title or f"{PROTOCOL_NAMES.get(self.protocol, self.protocol)} ({self.backend})"
        rows = [("mAP", self.mAP), ("mINP", self.mINP)]
        rows += [(f"Rank-{k}", self.cmc_at(k)) for k in (1, 5, 10, 20)]
        lines = [title, f"  queries: {self.num_valid_queries} valid, {self.num_skipped_queries} skipped"]
        lines += [f"  {name:<8}{'n/a' if math.isnan(value) else f'{100 * value:6.2f}%':>8}" for name, value in rows]
        return "\n".join(lines)

    __str__ = summary


@dataclass(frozen=True)
class _Labels:
    """Validated inputs: int64 host label vectors and the effective max_rank."""

    q_pids: torch.Tensor
    g_pids: torch.Tensor
    q_camids: torch.Tensor
    g_camids: torch.Tensor
    max_rank: int


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value}")
    return int(value)


def _label_vector(values: Any, name: str, length: int, length_source: str) -> torch.Tensor:
    """Integer labels (or floats with integral values), any array type -> contiguous int64 host tensor."""
    tensor, _ = as_tensor(values, name)
    if tensor.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D array of labels, got shape {tuple(tensor.shape)}")
    if tensor.shape[0] != length:
        raise ValueError(f"{name}: has length {tensor.shape[0]} but distmat has {length} {length_source}")
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"{name}: expected integer labels, got dtype {tensor.dtype}")
    if tensor.is_floating_point():
        if not bool(torch.isfinite(tensor).all()) or not bool((tensor == tensor.round()).all()):
            raise ValueError(f"{name}: expected integer labels, got {tensor.dtype} values that are not integral")
    return tensor.to(torch.int64).contiguous()


def _count_nan(distmat: torch.Tensor) -> int:
    """NaN count on the distmat's device, without a full-size temporary: one sum first (a NaN anywhere makes
    it NaN; a NaN sum without NaN needs +inf and -inf), then, only if it is NaN, a count in blocks of rows."""
    if not bool(torch.isnan(distmat.sum())):
        return 0
    rows_per_block = max(1, _NAN_CHECK_BLOCK_ELEMENTS // distmat.shape[1])
    return sum(
        int(torch.isnan(distmat[start : start + rows_per_block]).count_nonzero())
        for start in range(0, distmat.shape[0], rows_per_block)
    )


def _check_distmat(distmat: Any) -> torch.Tensor:
    tensor, _ = as_tensor(distmat, "distmat")
    tensor = tensor.detach()
    if tensor.dim() != 2:
        raise ValueError(f"distmat: expected a 2-D (num_query, num_gallery) array, got shape {tuple(tensor.shape)}")
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"distmat: expected real distances, got dtype {tensor.dtype}")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"distmat: expected at least one query row and one gallery column, got shape {tuple(tensor.shape)}")
    if tensor.is_floating_point():
        num_nan = _count_nan(tensor)
        if num_nan:
            raise ValueError(
                f"distmat: contains {num_nan} NaN distance(s); distances must be comparable (inf is allowed). "
                "Check the features for NaN"
            )
    return tensor


def _validate(distmat: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any, max_rank: Any) -> tuple[torch.Tensor, _Labels]:
    distmat_t = _check_distmat(distmat)
    num_query, num_gallery = distmat_t.shape
    labels = dict(
        q_pids=_label_vector(q_pids, "q_pids", num_query, "rows (queries)"),
        g_pids=_label_vector(g_pids, "g_pids", num_gallery, "columns (gallery items)"),
        q_camids=_label_vector(q_camids, "q_camids", num_query, "rows (queries)"),
        g_camids=_label_vector(g_camids, "g_camids", num_gallery, "columns (gallery items)"),
    )
    max_rank = _check_positive_int("max_rank", max_rank)
    if num_gallery < max_rank:
        warnings.warn(
            f"number of gallery samples ({num_gallery}) is smaller than max_rank ({max_rank}); "
            f"the CMC is cut at rank {num_gallery}",
            stacklevel=3,
        )
        max_rank = num_gallery
    return distmat_t, _Labels(max_rank=max_rank, **labels)


# -------------------------------------------------------------------------------------------------------
# Backends: (distmat tensor on any device, labels, protocol, seed, num_repeats) -> RankingResult.
# -------------------------------------------------------------------------------------------------------
@EVALUATE.register("reference")
def _evaluate_reference(distmat: torch.Tensor, labels: _Labels, protocol: str, seed: Any, num_repeats: int) -> RankingResult:
    distmat_np = (distmat.float() if distmat.dtype == torch.bfloat16 else distmat).cpu().numpy()  # numpy has no bfloat16
    args = [t.numpy() for t in (labels.q_pids, labels.g_pids, labels.q_camids, labels.g_camids)]
    if protocol == "cuhk03":
        result = reference.evaluate_cuhk03(distmat_np, *args, max_rank=labels.max_rank, num_repeats=num_repeats, seed=seed)
    else:
        result = reference.evaluate_market1501(distmat_np, *args, max_rank=labels.max_rank)
    return _from_reference(result, distmat.shape[1], protocol, "reference")


@EVALUATE.register("cpu")
def _evaluate_cpu(distmat: torch.Tensor, labels: _Labels, protocol: str, seed: Any, num_repeats: int) -> RankingResult:
    # The result's `backend` says which code computed it: these two cases are handed to the reference.
    if protocol == "cuhk03":  # the seeded per-identity sampling lives in the reference for now
        return _evaluate_reference(distmat, labels, protocol, seed, num_repeats)
    if distmat.dtype == torch.int64 and int(distmat.abs().max()) > _EXACT_FLOAT64_INTEGERS:
        # float64 would merge distinct huge integers into ties: rank them exactly in numpy instead.
        return _evaluate_reference(distmat, labels, protocol, seed, num_repeats)
    first_match_rank, average_precision, inverse_negative_penalty = _market1501_per_query(distmat, labels)
    return _aggregate(first_match_rank, average_precision, inverse_negative_penalty, labels.max_rank, distmat.shape[1])


def _native_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32/float64 as they are; half types widen to float32, integers to float64 (order-preserving)."""
    if dtype in (torch.float32, torch.float64):
        return dtype
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else torch.float64


def _market1501_per_query(distmat: torch.Tensor, labels: _Labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Native pass -> per query (first match rank int64, 0 = skipped; AP float64; INP float64), each (Q,)."""
    num_query, num_gallery = distmat.shape
    dtype = _native_dtype(distmat.dtype)
    first_match_rank = torch.empty(num_query, dtype=torch.int64)
    average_precision = torch.empty(num_query, dtype=torch.float64)
    inverse_negative_penalty = torch.empty(num_query, dtype=torch.float64)
    in_place = distmat.device.type == "cpu" and distmat.dtype == dtype and (num_gallery <= 1 or distmat.stride(1) == 1)
    rows_per_block = num_query if in_place else max(1, COPY_BLOCK_BYTES // (num_gallery * dtype.itemsize))
    row_blocks = [(start, min(start + rows_per_block, num_query)) for start in range(0, num_query, rows_per_block)]
    view = _native.view
    for start, end in row_blocks:
        block = distmat[start:end].to(device="cpu", dtype=dtype)
        if num_gallery > 1 and block.stride(1) != 1:  # e.g. a transposed matrix
            block = block.contiguous()
        _native._C.evaluate_market1501_cpu(
            view(block), view(labels.q_pids[start:end]), view(labels.g_pids), view(labels.q_camids[start:end]),
            view(labels.g_camids), view(first_match_rank[start:end]), view(average_precision[start:end]),
            view(inverse_negative_penalty[start:end]),
        )
    return first_match_rank.numpy(), average_precision.numpy(), inverse_negative_penalty.numpy()


def _aggregate(
    first_match_rank: np.ndarray,
    average_precision: np.ndarray,
    inverse_negative_penalty: np.ndarray,
    max_rank: int,
    num_gallery: int,
) -> RankingResult:
    """Per-query results -> means over the valid queries, in the reference's arithmetic (bit-identical)."""
    valid = first_match_rank > 0
    num_valid = int(valid.sum())
    reference._check_some_query_valid(num_valid)
    first_ranks = np.minimum(first_match_rank[valid], max_rank + 1)
    cmc_hits = np.cumsum(np.bincount(first_ranks, minlength=max_rank + 2)[1 : max_rank + 1])
    cmc = (cmc_hits / num_valid).astype(np.float32)
    cmc.setflags(write=False)
    return RankingResult(
        cmc=cmc,
        mAP=float(np.mean(average_precision[valid])),
        mINP=float(np.mean(inverse_negative_penalty[valid])),
        num_valid_queries=num_valid,
        num_skipped_queries=int(first_match_rank.size - num_valid),
        num_gallery=num_gallery,
        protocol="market1501",
        backend="cpu",
    )


def _from_reference(result: reference.EvaluationResult, num_gallery: int, protocol: str, backend: str) -> RankingResult:
    return RankingResult(
        cmc=result.cmc,
        mAP=result.mAP,
        mINP=result.mINP,
        num_valid_queries=result.num_valid_queries,
        num_skipped_queries=result.num_skipped_queries,
        num_gallery=num_gallery,
        protocol=protocol,
        backend=backend,
    )


# -------------------------------------------------------------------------------------------------------
# Public op.
# -------------------------------------------------------------------------------------------------------
def evaluate(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    protocol: str = "market1501",
    seed: int | None = 0,
    *,
    num_repeats: int = 10,
) -> RankingResult:
    """CMC, mAP and mINP of a (Q, G) query-gallery distance matrix (smaller = more similar).

    distmat: (Q, G) torch (CPU or CUDA), numpy or cupy array; float (NaN raises ValueError, inf is allowed)
    or integer. q_pids, q_camids: (Q,) and g_pids, g_camids: (G,) integer labels, any array type.
    protocol: "market1501" (gallery items with the query's pid and camera are removed; ties ranked by
    gallery index) or "cuhk03" (CMC averaged over num_repeats seeded draws of one gallery image per
    identity; seed as in reidfast.reference.evaluation.evaluate_cuhk03).

    A query left without a correct match is skipped, counted in num_skipped_queries and reported by one
    warning; if every query is skipped, ValueError. Returns a RankingResult (cmc, mAP, mINP, rank1/5/10,
    summary(), to_dict()), equal to the reference evaluator's numbers on every backend.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}")
    num_repeats = _check_positive_int("num_repeats", num_repeats)
    distmat_t, labels = _validate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    # Every backend runs on the host (a CUDA distmat is streamed to it), so select for a CPU input.
    _, implementation = EVALUATE.select(torch.device("cpu"))
    result = implementation(distmat_t, labels, protocol, seed, num_repeats)
    if result.num_skipped_queries:
        warnings.warn(
            f"{result.num_skipped_queries} of {distmat_t.shape[0]} queries have no valid gallery match (no gallery "
            "item of their pid outside their camera) and were skipped; the metrics average the other "
            f"{result.num_valid_queries}",
            stacklevel=2,
        )
    return result
