"""The CPU path past 2**31 elements: a 46,341 x 46,341 problem (N * M = 2,147,488,281 > 2**31), where any
32-bit row * M or row * stride offset wraps. The rows whose offsets pass 2**31 (the last ones) and the first
rows (where wrapped writes would land) are checked against the reference, computed for those rows alone.

Opt-in (REIDFAST_TEST_LARGE=1): ~15 s and 0.1 GB for topk_distance, ~1 min and 8.6 GB for the full
pairwise_distance output; each skips when the machine has less memory available than it needs."""
from __future__ import annotations

import os

import pytest
import torch

import reidfast
from reidfast.reference.distance import pairwise_distance as reference_distance
from reidfast.reference.distance import topk_distance as reference_topk

from test_distance import assert_distance_close

SIZE = 46_341  # SIZE * SIZE > 2**31
DIM = 4
CHECKED_ROWS = [0, 1, 2, SIZE // 2, SIZE - 3, SIZE - 2, SIZE - 1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("REIDFAST_TEST_LARGE") != "1",
                       reason="N * M > 2**31 tests: opt in with REIDFAST_TEST_LARGE=1 (up to 8.6 GB, minutes)"),
    pytest.mark.skipif(not reidfast.backends()["cpu"].available, reason="native CPU backend not built"),
]


def _available_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        fields = dict(line.split(":", 1) for line in meminfo)
    return int(fields["MemAvailable"].split()[0]) * 1024


def _require_memory(needed_bytes: int) -> None:
    try:
        available = _available_bytes()
    except (OSError, KeyError, ValueError):
        pytest.skip("cannot read MemAvailable from /proc/meminfo")
    if available < needed_bytes:
        pytest.skip(f"needs {needed_bytes / 2**30:.1f} GiB free, {available / 2**30:.1f} GiB available")


def _features():
    generator = torch.Generator().manual_seed(46341)
    x = torch.randn(SIZE, DIM, generator=generator)
    y = torch.randn(SIZE, DIM, generator=generator)
    assert x.shape[0] * y.shape[0] > 2**31
    return x, y


def test_topk_distance_past_2_31_pairs():
    _require_memory(2 * 2**30)
    x, y = _features()
    with reidfast.use_backend("cpu"):
        values, indices = reidfast.topk_distance(x, y, k=8)
    assert values.shape == (SIZE, 8) and indices.shape == (SIZE, 8)
    assert int(indices.min()) >= 0 and int(indices.max()) < SIZE
    expected_values, expected_indices = reference_topk(x[CHECKED_ROWS], y, 8, "euclidean", False)
    assert torch.equal(indices[CHECKED_ROWS], expected_indices)
    assert torch.allclose(values[CHECKED_ROWS], expected_values, rtol=1e-5, atol=1e-6)


def test_pairwise_distance_output_past_2_31_entries():
    _require_memory(SIZE * SIZE * 4 + 2 * 2**30)  # the float32 output and working room
    x, y = _features()
    with reidfast.use_backend("cpu"):
        out = reidfast.pairwise_distance(x, y, metric="sqeuclidean")
    assert out.shape == (SIZE, SIZE)
    rows = x[CHECKED_ROWS]
    assert_distance_close(out[CHECKED_ROWS], reference_distance(rows, y, "sqeuclidean"), "sqeuclidean", rows, y)
    # the very last entries sit past element 2**31 of the output
    assert (SIZE - 1) * SIZE + SIZE - 1 >= 2**31
