"""The cuda backend of rf.evaluate_features: rank counting fused into the CUDA distance tile.

The pivots (each query's matches with their distances) come from the CUDA distance kernel, and the counting
pass (csrc/cuda/rank_count.cu) computes every query x gallery distance with the same tile code and epilogue,
so pivots and counted items are the same floats as ``rf.pairwise_distance`` on the cuda backend. No block of
distances is ever written: memory beyond the inputs is the pivots and the (pivots x groups) histogram.
Under REIDFAST_EMULATE_CUDA=1 the same kernels run on host tensors in the CPU emulator (tests).
"""
from __future__ import annotations

import numpy as np
import torch

from .. import _native
from .distance import _pairwise_distance_cuda, _unit_inner_stride
from .evaluate_features import EVALUATE_FEATURES, _block_ranges, _evaluate_with, _finish_histogram, _take_rows

# Gallery items per kernel launch when chunk_size is not given: only the progress bar's granularity (the
# kernel holds no block of distances); large enough that launches are few.
LAUNCH_COLUMNS = 1 << 16


class _CudaPass:
    """The cuda backend's pass: pivots by the CUDA distance kernel, counting by the fused CUDA kernel."""

    name = "cuda"

    def __init__(self, inputs) -> None:
        self.inputs = inputs
        self.query = _unit_inner_stride(inputs.query)
        self.gallery = _unit_inner_stride(inputs.gallery)

    def distances(self, query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        """Distances of rows of the features: the cuda backend's pairwise_distance, entry for entry."""
        return _pairwise_distance_cuda(query, gallery, self.inputs.metric)

    def histogram(self, rows: np.ndarray, pivot_offsets: np.ndarray, pivot_distance: np.ndarray,
                  pivot_index: np.ndarray, groups: torch.Tensor | None, num_groups: int, chunk_size: int | None,
                  progress: bool) -> np.ndarray:
        """(P * num_groups,) int64 slot histogram of the query rows `rows` over the whole gallery."""
        device = self.query.device
        inputs = self.inputs

        def on_device(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=dtype)

        query = _take_rows(self.query, rows) if rows.size < self.query.shape[0] else self.query
        offsets = on_device(pivot_offsets, torch.int64)
        distance = on_device(pivot_distance, inputs.distance_dtype)
        index = on_device(pivot_index, torch.int64)
        row_labels = inputs.labels.q_pids[torch.from_numpy(rows)].to(device)
        item_labels = inputs.labels.g_pids.to(device)  # global gallery indices (with group=, every rank's)
        group_ids = None if groups is None else groups.to(device=device, dtype=torch.int64).contiguous()
        histogram = torch.zeros(pivot_index.size * num_groups, dtype=torch.int64, device=device)
        nan_count = torch.zeros(1, dtype=torch.int64, device=device)
        view = _native.cuda_view
        kernels = _native.cuda_kernels()
        offset = 0 if inputs.shard is None else inputs.shard.offset
        stream = _native.cuda_stream(device)
        for start, end in _block_ranges(self.gallery.shape[0], chunk_size or LAUNCH_COLUMNS, progress,
                                        "evaluate_features"):
            kernels.rank_count_cuda(
                view(query), view(self.gallery[start:end]), offset + start, _native.METRIC_CODES[inputs.metric],
                view(offsets), view(distance), view(index), view(row_labels), view(item_labels),
                None if group_ids is None else view(group_ids), num_groups, view(histogram), view(nan_count), stream,
            )
        return _finish_histogram(inputs, histogram.cpu().numpy(), int(nan_count.item()))


@EVALUATE_FEATURES.register("cuda")
def _evaluate_cuda(inputs, protocol: str, seed, num_repeats: int, chunk_size, progress):
    return _evaluate_with(_CudaPass(inputs), inputs, protocol, seed, num_repeats, chunk_size, progress)
