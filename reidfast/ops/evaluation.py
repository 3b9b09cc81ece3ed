"""Re-ID ranking evaluation (CMC, mAP, mINP): argument checks, array conversion, backend dispatch.

Semantics are those of reidfast/reference/evaluation.py (torchreid ``eval_market1501`` / ``eval_cuhk03``,
mINP as in fast-reid), and the backends agree with it exactly: same CMC, and the same float64 mAP and
mINP bit for bit.

Backends (defaults: cpu for host inputs, reference without the native module; torch for CUDA/cupy inputs):
    cpu        C++/OpenMP over queries (csrc/cpu/evaluate.cpp). No row is sorted: each query's correct
               matches are ranked by counting the valid gallery items before them (O(k) scratch memory
               per thread for k matches); float64 AP summed in numpy's pairwise order. CUHK03: a second
               pass ranks each sampled match (csrc/cpu/evaluate.cpp, evaluate_cuhk03_sampled_ranks).
    torch      torch ops on the distmat's own device (CUDA, or CPU when forced), in chunks of query rows
               of about DEVICE_CHUNK_BYTES of temporaries: a stable sort per row, the kept rank of each
               correct match, then AP/INP/CMC on the host from those O(matches) ranks.
    reference  the numpy evaluator (a stable argsort per query).
The cpu backend reads a float32/float64 host distmat in place (any row stride). Any other distmat is
copied in blocks of rows (about 64 MiB each): a CUDA one to the host (when cpu is forced), a
float16/bfloat16 one widened to float32, an integer one to float64, so no copy of the whole matrix is
made. The reference backend takes the whole matrix to the host as numpy.

CUHK03's seeded draws (one image per identity and repeat, Q x num_repeats x identities integers) are the
reference's: the same numpy generator, the same bounds, the same order (_Cuhk03Sampling), made by the
native module with numpy's algorithm on the generator's bits when a start-up self-check agrees with
numpy, else by numpy itself. So every backend gives the reference's numbers for a seed.
"""
from __future__ import annotations

import functools
import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from .. import _native
from .._arrays import as_tensor
from .._checks import check_some_query_valid
from .._dispatch import Op, requested_backend
from ..reference import evaluation as reference

EVALUATE = Op("evaluate")
PROTOCOLS = ("market1501", "cuhk03")
PROTOCOL_NAMES = {"market1501": "Market-1501", "cuhk03": "CUHK03 single-shot"}
COPY_BLOCK_BYTES = 64 << 20  # host memory per block of distmat rows copied (from the GPU, or to widen)
CUHK03_DRAW_BLOCK_BYTES = 64 << 20  # host memory for one block of queries' CUHK03 draws (and their bounds)
# The torch backend's temporaries per chunk of query rows, by device: bigger chunks mean fewer launches.
DEVICE_CHUNK_BYTES = {"cpu": 128 << 20, "cuda": 1 << 30}
_DEVICE_BYTES_PER_DISTANCE = 40  # its peak per distance: sort values and int64 indices, masks, int32 ranks
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
    max_rank = reference.cut_max_rank(_check_positive_int("max_rank", max_rank), num_gallery)
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
    if distmat.dtype == torch.int64 and int(distmat.abs().max()) > _EXACT_FLOAT64_INTEGERS:
        # float64 would merge distinct huge integers into ties: rank them exactly in numpy instead (the
        # result's `backend` says so).
        return _evaluate_reference(distmat, labels, protocol, seed, num_repeats)
    sampling = _Cuhk03Sampling(labels, num_repeats, seed) if protocol == "cuhk03" else None
    per_query = _cpu_per_query(distmat, labels, sampling)
    return _aggregate(*per_query, labels.max_rank, distmat.shape[1], "cpu", sampling)


def _cpu_per_query(
    distmat: torch.Tensor, labels: _Labels, sampling: _Cuhk03Sampling | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Native passes -> per query (first match rank int64, 0 = skipped; AP float64; INP float64), each (Q,);
    with `sampling` (CUHK03) also the sampled matches' ranks, accumulated into sampling's CMC."""
    num_query = distmat.shape[0]
    outputs = [torch.empty(num_query, dtype=dtype) for dtype in (torch.int64, torch.float64, torch.float64)]
    view = _native.view
    max_rows = num_query if sampling is None else sampling.rows_per_block
    for start, end, block in _host_row_blocks(distmat, max_rows):
        block_labels = (view(labels.q_pids[start:end]), view(labels.g_pids), view(labels.q_camids[start:end]), view(labels.g_camids))
        _native._C.evaluate_market1501_cpu(view(block), *block_labels, *(view(out[start:end]) for out in outputs))
        if sampling is not None:
            offsets = torch.from_numpy(sampling.draw(start, end))
            sampled_rank = torch.empty((end - start, sampling.num_repeats), dtype=torch.int64)
            _native._C.evaluate_cuhk03_sampled_ranks_cpu(
                view(block), *block_labels, view(sampling.identity), view(offsets), view(sampled_rank)
            )
            sampling.add_sampled_ranks(sampled_rank.numpy()[sampling.valid_rows(start, end)])
    return tuple(out.numpy() for out in outputs)  # type: ignore[return-value]


def _native_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32/float64 as they are; half types widen to float32, integers to float64 (order-preserving)."""
    if dtype in (torch.float32, torch.float64):
        return dtype
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else torch.float64


def _host_row_blocks(distmat: torch.Tensor, max_rows: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(start, end, rows start:end as a float32/float64 host tensor with unit inner stride), in order.

    A float32/float64 host distmat is read in place; any other is copied a block of rows (about
    COPY_BLOCK_BYTES) at a time: from the GPU, widened from half types, integers to float64.
    """
    num_query, num_gallery = distmat.shape
    dtype = _native_dtype(distmat.dtype)
    in_place = distmat.device.type == "cpu" and distmat.dtype == dtype and (num_gallery <= 1 or distmat.stride(1) == 1)
    rows_per_block = num_query if in_place else max(1, COPY_BLOCK_BYTES // (num_gallery * dtype.itemsize))
    rows_per_block = min(rows_per_block, max_rows)
    for start in range(0, num_query, rows_per_block):
        end = min(start + rows_per_block, num_query)
        block = distmat[start:end].to(device="cpu", dtype=dtype)
        if num_gallery > 1 and block.stride(1) != 1:  # e.g. a transposed matrix
            block = block.contiguous()
        yield start, end, block


@EVALUATE.register("torch")
def _evaluate_torch(distmat: torch.Tensor, labels: _Labels, protocol: str, seed: Any, num_repeats: int) -> RankingResult:
    """torch ops on the distmat's own device, in chunks of query rows (DEVICE_CHUNK_BYTES of temporaries).

    Per chunk: one stable sort per row (ties by gallery index), the kept position of every correct match
    (a cumulative count of the kept items in sorted order), copied to the host (O(matches)); AP, INP and
    the first match come from those positions on the host (_metrics_from_match_positions). CUHK03: per
    repeat, each identity's images before the sampled match are counted by comparison and scatter_add.
    """
    device = distmat.device
    num_query, num_gallery = distmat.shape
    q_pids, g_pids, q_camids, g_camids = (t.to(device) for t in (labels.q_pids, labels.g_pids, labels.q_camids, labels.g_camids))
    sampling = _Cuhk03Sampling(labels, num_repeats, seed) if protocol == "cuhk03" else None
    identity = None if sampling is None else sampling.identity.to(device)
    bytes_per_row = num_gallery * _DEVICE_BYTES_PER_DISTANCE
    if sampling is not None:
        bytes_per_row += 3 * num_repeats * sampling.num_identities * 8  # offsets on the host, their bounds, the device copy
    budget = DEVICE_CHUNK_BYTES.get(device.type, DEVICE_CHUNK_BYTES["cpu"])
    rows_per_chunk = max(1, budget // bytes_per_row)
    num_matches_parts, num_removed_parts, position_parts = [], [], []
    for start in range(0, num_query, rows_per_chunk):
        end = min(start + rows_per_chunk, num_query)
        chunk = distmat[start:end]
        if chunk.is_floating_point():
            chunk = chunk + 0  # -0.0 -> +0.0, so that no sort implementation can order it before +0.0
        num_matches, num_removed, positions, match_gallery_index = _match_positions_torch(
            chunk, q_pids[start:end], g_pids, q_camids[start:end], g_camids
        )
        num_matches_parts.append(num_matches.cpu())
        num_removed_parts.append(num_removed.cpu())
        position_parts.append(positions.cpu())
        if sampling is not None:
            sampling.add_sampled_ranks(
                _cuhk03_sampled_ranks_torch(chunk, sampling, start, end, num_matches, match_gallery_index, identity)
            )
        del chunk, match_gallery_index  # before the next chunk's sort
    num_matches = torch.cat(num_matches_parts).numpy()
    num_kept = num_gallery - torch.cat(num_removed_parts).numpy()
    positions = torch.cat(position_parts).numpy()
    per_query = _metrics_from_match_positions(num_matches, positions, num_kept)
    return _aggregate(*per_query, labels.max_rank, num_gallery, "torch", sampling)


def _match_positions_torch(
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


def _cuhk03_sampled_ranks_torch(
    chunk: torch.Tensor,
    sampling: "_Cuhk03Sampling",
    start: int,
    end: int,
    num_matches: torch.Tensor,
    match_gallery_index: torch.Tensor,
    identity: torch.Tensor,
) -> np.ndarray:
    """Rank of the sampled match in each sampled gallery, (valid rows of the chunk, R) int64 on the host.

    chunk (C, G) distances; num_matches (C,); match_gallery_index (sum num_matches,): each row's matches in
    ranking order; identity (G,): gallery identity indices, all on the chunk's device. An identity's o-th
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


# -------------------------------------------------------------------------------------------------------
# Shared host steps: the CUHK03 draws, AP from match positions, aggregation.
# -------------------------------------------------------------------------------------------------------
class _Cuhk03Sampling:
    """The reference's seeded single-shot sampling (reidfast.reference.evaluation.evaluate_cuhk03), in its order.

    For each valid query, in query order, the reference draws rng.integers(0, counts, size=(R, J)): for each
    repeat and each gallery identity (ascending pid) which of its kept images (in ranking order) is taken;
    counts are the identities' image counts, the query's own being its number of matches. Those bounds need
    no ranking, so the same draws on the same generator give the same offsets here, block after block of
    queries. The native module makes them with numpy's own algorithm on the generator's bits (several times
    faster than numpy's per-element broadcasting) once _native_draws_match_numpy has checked that it
    reproduces this numpy; otherwise one flat Generator.integers call per block does (the same sequence).
    """

    def __init__(self, labels: _Labels, num_repeats: int, seed: Any) -> None:
        g_pids = labels.g_pids.numpy()
        self.identities, identity, self.images_per_identity = np.unique(g_pids, return_inverse=True, return_counts=True)
        self.images_per_identity = self.images_per_identity.astype(np.int64)
        self.identity = torch.from_numpy(identity.reshape(-1).astype(np.int64))  # (G,) identity index per item
        self.num_identities = int(self.identities.size)
        self.num_repeats = num_repeats
        self.num_matches = _num_matches(labels)
        q_pids = labels.q_pids.numpy()
        self.query_identity = np.minimum(np.searchsorted(self.identities, q_pids), self.num_identities - 1).astype(np.int64)
        self.rows_per_block = max(1, CUHK03_DRAW_BLOCK_BYTES // (2 * 8 * num_repeats * self.num_identities))
        self.max_rank = labels.max_rank
        self.cmc_sum = np.zeros(labels.max_rank, dtype=np.float64)
        self._rng = np.random.default_rng(seed)
        self.native_draws = _native_draws_match_numpy(type(self._rng.bit_generator))
        self._next_query = 0
        self._buffer = np.empty(0, dtype=np.int64)  # reused block after block: no page faults per block

    def valid_rows(self, start: int, end: int) -> np.ndarray:
        """Rows of queries start:end that have a valid match, relative to start."""
        return np.flatnonzero(self.num_matches[start:end] > 0)

    def draw(self, start: int, end: int) -> np.ndarray:
        """Offsets (end - start, R, J) int64 of queries start:end (the next ones), valid until the next call;
        the rows of skipped queries hold no draws (stale values)."""
        if start != self._next_query:
            raise RuntimeError(f"CUHK03 draws must follow the query order: expected query {self._next_query}, got {start}")
        self._next_query = end
        shape = (end - start, self.num_repeats, self.num_identities)
        if self._buffer.size < math.prod(shape):
            self._buffer = np.empty(math.prod(shape), dtype=np.int64)
        offsets = self._buffer[: math.prod(shape)].reshape(shape)
        own_identity, num_matches = self.query_identity[start:end], self.num_matches[start:end]
        if self.native_draws:
            _native_draw(self._rng, self.images_per_identity, own_identity, num_matches, offsets)
            return offsets
        valid_rows = self.valid_rows(start, end)
        bounds = np.broadcast_to(self.images_per_identity, (valid_rows.size, self.num_repeats, self.num_identities)).copy()
        bounds[np.arange(valid_rows.size), :, own_identity[valid_rows]] = num_matches[valid_rows, None]
        offsets[valid_rows] = self._rng.integers(0, bounds)  # C order: the reference's per-query draws, in order
        return offsets

    def add_sampled_ranks(self, sampled_rank: np.ndarray) -> None:
        """Accumulate the CMC of the next valid queries' sampled ranks (V, R), as the reference does."""
        num_queries = sampled_rank.shape[0]
        width = self.max_rank + 2  # ranks past max_rank go to the last column
        flat = np.arange(num_queries)[:, None] * width + np.minimum(sampled_rank, self.max_rank + 1)
        hits = np.bincount(flat.ravel(), minlength=num_queries * width).reshape(num_queries, width)
        query_cmc = np.cumsum(hits, axis=1)[:, 1 : self.max_rank + 1] / self.num_repeats
        # The reference adds each query's CMC to a float64 running sum in query order; cumsum does the same.
        self.cmc_sum = np.cumsum(np.vstack([self.cmc_sum[None], query_cmc]), axis=0)[-1]


def _native_draw(
    rng: np.random.Generator, images_per_identity: np.ndarray, own_identity: np.ndarray, num_matches: np.ndarray,
    offsets: np.ndarray,
) -> None:
    """The native module's copy of the draws (csrc/cpu/evaluate.cpp, cuhk03_draw_offsets) on rng's bits."""
    bit_generator = rng.bit_generator
    arrays = (images_per_identity, own_identity, num_matches, offsets)
    with bit_generator.lock:  # as numpy's own methods do
        _native._C.cuhk03_draw_offsets_cpu(
            bit_generator.ctypes.bit_generator.value, *(_native.view(torch.from_numpy(a)) for a in arrays)
        )


@functools.lru_cache(maxsize=None)
def _native_draws_match_numpy(bit_generator_type: type) -> bool:
    """Whether the native draws equal Generator.integers here: the same values and the same bits consumed (the
    next draws agree), on bounds that take no bits (1), rarely reject (small) and reject often (2^31 + 1)."""
    if not _native.available():
        return False
    try:
        generators = [np.random.Generator(bit_generator_type(20240611)) for _ in range(2)]
    except Exception:  # a bit generator that cannot be seeded this way: use numpy's draws
        return False
    images_per_identity = np.array([1, 2, 3, 7, 751, 2**31 + 1, 2**32 - 1, 1, 5], dtype=np.int64)
    own_identity = np.array([4, 0, 8], dtype=np.int64)
    num_matches = np.array([2, 0, 6], dtype=np.int64)
    offsets = np.zeros((3, 40, images_per_identity.size), dtype=np.int64)
    _native_draw(generators[0], images_per_identity, own_identity, num_matches, offsets)
    expected = np.zeros_like(offsets)
    for q in np.flatnonzero(num_matches):
        bounds = images_per_identity.copy()
        bounds[own_identity[q]] = num_matches[q]
        expected[q] = generators[1].integers(0, bounds, size=offsets.shape[1:])
    same_state_after = np.array_equal(generators[0].integers(0, 2**62, 4), generators[1].integers(0, 2**62, 4))
    return bool(np.array_equal(offsets, expected)) and same_state_after


def _num_matches(labels: _Labels) -> np.ndarray:
    """(Q,) int64: gallery items of the query's pid in another camera (0: the query is skipped)."""
    q_pids, g_pids, q_camids, g_camids = (t.numpy() for t in (labels.q_pids, labels.g_pids, labels.q_camids, labels.g_camids))
    cameras, g_camera = np.unique(g_camids, return_inverse=True)
    pids, g_pid, images_per_pid = np.unique(g_pids, return_inverse=True, return_counts=True)
    pairs, images_per_pair = np.unique(g_pid.reshape(-1) * cameras.size + g_camera.reshape(-1), return_counts=True)
    q_pid = np.minimum(np.searchsorted(pids, q_pids), pids.size - 1)
    q_camera = np.minimum(np.searchsorted(cameras, q_camids), cameras.size - 1)
    pid_found = pids[q_pid] == q_pids
    q_pair = q_pid * cameras.size + q_camera
    pair_slot = np.minimum(np.searchsorted(pairs, q_pair), pairs.size - 1)
    pair_found = pid_found & (cameras[q_camera] == q_camids) & (pairs[pair_slot] == q_pair)
    same_pid = np.where(pid_found, images_per_pid[q_pid], 0)
    return same_pid - np.where(pair_found, images_per_pair[pair_slot], 0)


def _metrics_from_match_positions(
    num_matches: np.ndarray, positions: np.ndarray, num_kept: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query (first match rank int64, 0 = skipped; AP float64; INP float64), each (Q,), bit-identical to
    the reference, from each query's num_matches 0-based positions (ascending) in its ranking of num_kept items."""
    num_query = num_matches.size
    valid = num_matches > 0
    query_of_entry = np.repeat(np.arange(num_query), num_matches)
    first_entry = np.cumsum(num_matches) - num_matches
    hits = np.arange(positions.size) - first_entry[query_of_entry] + 1
    precision_at_match = hits / (positions + 1.0)
    precision_sum = _numpy_sum_of_sparse(query_of_entry, positions, precision_at_match, num_kept)
    first_match_rank = np.zeros(num_query, dtype=np.int64)
    average_precision = np.zeros(num_query)
    inverse_negative_penalty = np.zeros(num_query)
    first_match_rank[valid] = positions[first_entry[valid]] + 1
    average_precision[valid] = precision_sum[valid] / num_matches[valid]
    last_position = positions[first_entry[valid] + num_matches[valid] - 1]
    inverse_negative_penalty[valid] = num_matches[valid] / (last_position + 1.0)
    return first_match_rank, average_precision, inverse_negative_penalty


_PAIRWISE_BLOCK = 128  # numpy's PW_BLOCKSIZE
_PAIRWISE_LANES = 8  # numpy's unroll factor


def _numpy_sum_of_sparse(segment: np.ndarray, position: np.ndarray, value: np.ndarray, length: np.ndarray) -> np.ndarray:
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


def _aggregate(
    first_match_rank: np.ndarray,
    average_precision: np.ndarray,
    inverse_negative_penalty: np.ndarray,
    max_rank: int,
    num_gallery: int,
    backend: str,
    sampling: _Cuhk03Sampling | None = None,
) -> RankingResult:
    """Per-query results -> means over the valid queries, in the reference's arithmetic (bit-identical).

    sampling: the CUHK03 draws with their accumulated CMC (None: Market-1501, CMC from first_match_rank).
    """
    valid = first_match_rank > 0
    num_valid = int(valid.sum())
    check_some_query_valid(num_valid)
    if sampling is None:
        first_ranks = np.minimum(first_match_rank[valid], max_rank + 1)
        cmc_hits = np.cumsum(np.bincount(first_ranks, minlength=max_rank + 2)[1 : max_rank + 1])
        cmc = (cmc_hits / num_valid).astype(np.float32)
    else:
        cmc = (sampling.cmc_sum / num_valid).astype(np.float32)
    cmc.setflags(write=False)
    return RankingResult(
        cmc=cmc,
        mAP=float(np.mean(average_precision[valid])),
        mINP=float(np.mean(inverse_negative_penalty[valid])),
        num_valid_queries=num_valid,
        num_skipped_queries=int(first_match_rank.size - num_valid),
        num_gallery=num_gallery,
        protocol="market1501" if sampling is None else "cuhk03",
        backend=backend,
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
    summary(), to_dict()), equal to the reference evaluator's numbers on every backend (for CUHK03: the same
    seeded draws). A host distmat is evaluated by the native cpu backend; a CUDA/cupy one on its GPU by the
    torch backend, in chunks of rows; `reidfast.use_backend(...)` forces one.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}")
    num_repeats = _check_positive_int("num_repeats", num_repeats)
    distmat_t, labels = _validate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    # The host backends (cpu, reference) stream a distmat from any device, so a forced one takes any input.
    forced = requested_backend()
    device = torch.device("cpu") if forced in ("cpu", "reference") else distmat_t.device
    backend, implementation = EVALUATE.select(device)
    if backend == "torch" and forced is None and device.type == "cpu":
        # Host inputs without the native module: the numpy reference, not the torch backend, which sorts every
        # row and measured 0.57x the reference at Market-1501 scale on the CPU (benchmarks/RESULTS.md).
        implementation = EVALUATE.implementations["reference"]
    result = implementation(distmat_t, labels, protocol, seed, num_repeats)
    if result.num_skipped_queries:
        warnings.warn(
            f"{result.num_skipped_queries} of {distmat_t.shape[0]} queries have no valid gallery match (no gallery "
            "item of their pid outside their camera) and were skipped; the metrics average the other "
            f"{result.num_valid_queries}",
            stacklevel=2,
        )
    return result
