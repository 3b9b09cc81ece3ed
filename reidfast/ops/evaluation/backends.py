"""rf.evaluate's backends: (distmat tensor on any device, labels, protocol, seed, num_repeats) -> RankingResult.

    cpu        C++/OpenMP over queries (csrc/cpu/evaluate.cpp). No row is sorted: each query's correct
               matches are ranked by counting the valid gallery items before them (O(k) scratch memory
               per thread for k matches); float64 AP summed in numpy's pairwise order. CUHK03: a second
               pass ranks each sampled match (csrc/cpu/evaluate.cpp, evaluate_cuhk03_sampled_ranks).
    torch      torch ops on the distmat's own device (reidfast/kernels/torch/evaluate.py), in chunks of
               query rows of about DEVICE_CHUNK_BYTES of temporaries; AP/INP/CMC on the host from the
               O(matches) ranks it returns.
    reference  the numpy evaluator (a stable argsort per query).
The host backends (cpu, reference) stream a distmat from any device, so a forced one takes any input (the
dispatcher's `any_device`). The cpu backend reads a float32/float64 host distmat in place (any row stride). Any
other distmat is copied in blocks of rows (about 64 MiB each): a CUDA one to the host (when cpu is forced), a
float16/bfloat16 one widened to float32, an integer one to float64, so no copy of the whole matrix is made.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from ... import _native
from ..._dispatch import Op
from ...reference import evaluation as reference
from .checks import Labels
from .cuhk03 import Cuhk03Sampling
from .pairwise_sum import numpy_sum_of_sparse
from .result import RankingResult, aggregate, from_reference

# Host inputs without the native module go to the numpy reference, not the torch backend, which sorts every row
# and measured 0.57x the reference at Market-1501 scale on the CPU (benchmarks/RESULTS.md).
EVALUATE = Op("evaluate", order={"cpu": ("cpu", "reference")}, any_device=("cpu", "reference"))
COPY_BLOCK_BYTES = 64 << 20  # host memory per block of distmat rows copied (from the GPU, or to widen)
# The torch backend's temporaries per chunk of query rows, by device: bigger chunks mean fewer launches.
DEVICE_CHUNK_BYTES = {"cpu": 128 << 20, "cuda": 1 << 30}
_DEVICE_BYTES_PER_DISTANCE = 40  # its peak per distance: sort values and int64 indices, masks, int32 ranks
_EXACT_FLOAT64_INTEGERS = 2**53  # integer distances up to this magnitude convert to float64 exactly


@EVALUATE.register("reference")
def _evaluate_reference(distmat: torch.Tensor, labels: Labels, protocol: str, seed: Any, num_repeats: int) -> RankingResult:
    distmat_np = (distmat.float() if distmat.dtype == torch.bfloat16 else distmat).cpu().numpy()  # numpy has no bfloat16
    args = [t.numpy() for t in (labels.q_pids, labels.g_pids, labels.q_camids, labels.g_camids)]
    if protocol == "cuhk03":
        result = reference.evaluate_cuhk03(distmat_np, *args, max_rank=labels.max_rank, num_repeats=num_repeats, seed=seed)
    else:
        result = reference.evaluate_market1501(distmat_np, *args, max_rank=labels.max_rank)
    return from_reference(result, distmat.shape[1], protocol, "reference")


@EVALUATE.register("cpu")
def _evaluate_cpu(distmat: torch.Tensor, labels: Labels, protocol: str, seed: Any, num_repeats: int) -> RankingResult:
    if distmat.dtype == torch.int64 and int(distmat.abs().max()) > _EXACT_FLOAT64_INTEGERS:
        # float64 would merge distinct huge integers into ties: rank them exactly in numpy instead (the
        # result's `backend` says so).
        return _evaluate_reference(distmat, labels, protocol, seed, num_repeats)
    sampling = Cuhk03Sampling(labels, num_repeats, seed) if protocol == "cuhk03" else None
    per_query = _cpu_per_query(distmat, labels, sampling)
    return aggregate(*per_query, labels.max_rank, distmat.shape[1], "cpu", sampling)


def _cpu_per_query(
    distmat: torch.Tensor, labels: Labels, sampling: Cuhk03Sampling | None = None
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
def _evaluate_torch(distmat: torch.Tensor, labels: Labels, protocol: str, seed: Any, num_repeats: int) -> RankingResult:
    """reidfast/kernels/torch/evaluate.py on the distmat's device, in chunks of DEVICE_CHUNK_BYTES of temporaries;
    AP, INP and the first match from the match positions on the host (metrics_from_match_positions)."""
    from ...kernels.torch import evaluate as torch_evaluate

    num_gallery = distmat.shape[1]
    sampling = Cuhk03Sampling(labels, num_repeats, seed) if protocol == "cuhk03" else None
    bytes_per_row = num_gallery * _DEVICE_BYTES_PER_DISTANCE
    if sampling is not None:
        bytes_per_row += 3 * num_repeats * sampling.num_identities * 8  # offsets on the host, their bounds, the device copy
    budget = DEVICE_CHUNK_BYTES.get(distmat.device.type, DEVICE_CHUNK_BYTES["cpu"])
    num_matches, num_kept, positions = torch_evaluate.evaluate(
        distmat, labels.q_pids, labels.g_pids, labels.q_camids, labels.g_camids,
        rows_per_chunk=max(1, budget // bytes_per_row), sampling=sampling,
    )
    per_query = metrics_from_match_positions(num_matches, positions, num_kept)
    return aggregate(*per_query, labels.max_rank, num_gallery, "torch", sampling)


def metrics_from_match_positions(
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
    precision_sum = numpy_sum_of_sparse(query_of_entry, positions, precision_at_match, num_kept)
    first_match_rank = np.zeros(num_query, dtype=np.int64)
    average_precision = np.zeros(num_query)
    inverse_negative_penalty = np.zeros(num_query)
    first_match_rank[valid] = positions[first_entry[valid]] + 1
    average_precision[valid] = precision_sum[valid] / num_matches[valid]
    last_position = positions[first_entry[valid] + num_matches[valid] - 1]
    inverse_negative_penalty[valid] = num_matches[valid] / (last_position + 1.0)
    return first_match_rank, average_precision, inverse_negative_penalty
