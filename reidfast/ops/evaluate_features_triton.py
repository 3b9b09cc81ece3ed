"""The triton backend of evaluate_features: the rank counting fused into the Triton distance tile
(kernels/triton/rank_count.py), the pivots' distances from the Triton distance kernel, so that both see the
same floats. CUDA tensors in production; CPU tensors under TRITON_INTERPRET=1 (tests)."""
from __future__ import annotations

import numpy as np
import torch

from .distance import _unit_inner_stride
from .evaluate_features import (
    EVALUATE_FEATURES,
    _block_ranges,
    _evaluate_with,
    _finish_histogram,
    _Inputs,
    _take_rows,
)
from .evaluation.result import RankingResult

LAUNCH_COLUMNS = 1 << 16  # gallery items per kernel launch without chunk_size (the progress bar's step)


class _TritonPass:
    """One launch of the fused distance + rank-count kernel per block of the gallery; the histogram and the
    NaN count stay on the device until the pass ends."""

    name = "triton"

    def __init__(self, inputs: _Inputs) -> None:
        self.inputs = inputs
        self.gallery = _unit_inner_stride(inputs.gallery)

    def distances(self, query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        from ..kernels.triton import distance

        return distance.pairwise_distance(_unit_inner_stride(query), _unit_inner_stride(gallery), self.inputs.metric)

    def histogram(self, rows, pivot_offsets, pivot_distance, pivot_index, groups, num_groups, chunk_size, progress):
        from ..kernels.triton import rank_count

        device = self.inputs.query.device
        query = _unit_inner_stride(_take_rows(self.inputs.query, rows))
        counts = np.diff(pivot_offsets)
        search_steps = int(counts.max()).bit_length() if counts.size else 0

        def on_device(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=dtype)

        offsets = on_device(pivot_offsets, torch.int64)
        distance = on_device(pivot_distance, self.inputs.distance_dtype)
        index = on_device(pivot_index, torch.int32)  # global indices < 2**31 (rank_count checks)
        row_labels = self.inputs.labels.q_pids[torch.from_numpy(rows)].to(device)
        item_labels = self.inputs.labels.g_pids.to(device)  # global with group=
        groups_device = None if groups is None else groups.to(device=device, dtype=torch.int64).contiguous()
        histogram = torch.zeros(pivot_index.size * num_groups, dtype=torch.int64, device=device)
        nan_count = torch.zeros(1, dtype=torch.int64, device=device)
        offset = 0 if self.inputs.shard is None else self.inputs.shard.offset
        block = chunk_size or LAUNCH_COLUMNS
        for start, end in _block_ranges(self.gallery.shape[0], block, progress, "evaluate_features"):
            rank_count.rank_count_block(
                query, self.gallery[start:end], offset + start, offsets, distance, index, row_labels, item_labels,
                groups_device, num_groups, histogram, nan_count, self.inputs.metric, search_steps,
            )
        return _finish_histogram(self.inputs, histogram.cpu().numpy(), int(nan_count.item()))


@EVALUATE_FEATURES.register("triton")
def _evaluate_triton(inputs: _Inputs, protocol: str, seed, num_repeats: int, chunk_size, progress) -> RankingResult:
    return _evaluate_with(_TritonPass(inputs), inputs, protocol, seed, num_repeats, chunk_size, progress)
