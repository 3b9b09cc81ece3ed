"""Fused distance + top-k: every backend against the reference (full matrix + stable sort)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import reidfast
from reidfast.reference.distance import METRICS, pairwise_distance as reference_distance
from reidfast.reference.distance import topk_distance as reference_topk

from conftest import device_backend_params
from test_distance import assert_close


def run_topk(backend, *args, **kwargs):
    with reidfast.use_backend(backend):
        return reidfast.topk_distance(*args, **kwargs)


def check_against_reference(backend, x, y, k, metric, exclude_self=False, atol=2e-4):
    values, indices = run_topk(backend, x, y, k=k, metric=metric, exclude_self=exclude_self)
    ref_values, ref_indices = reference_topk(x, y, k, metric, exclude_self)
    assert values.shape == indices.shape == (x.shape[0], k)
    assert indices.dtype == torch.int64
    assert_close(values, ref_values, atol=atol)
    assert bool((values[:, 1:] >= values[:, :-1]).all()), "values must be ascending"
    # Indices must agree wherever the reference's neighbours are separated by more than the tolerance;
    # elsewhere the chosen column's reference distance must equal the reported value.
    full = reference_distance(x, x if y is None else y, metric)
    chosen = full.gather(1, indices.to(full.device))
    if exclude_self:
        assert not bool((indices.cpu() == torch.arange(x.shape[0])[:, None]).any()), "self must be excluded"
    assert_close(chosen, ref_values, atol=atol * 4)
    sorted_full = torch.sort(full, dim=1, stable=True).values
    if exclude_self:
        sorted_full = torch.sort(full.fill_diagonal_(float("inf")), dim=1, stable=True).values
    infinity = torch.full((x.shape[0], 1), float("inf"), device=full.device)
    gap_after = (torch.cat([sorted_full[:, 1:], infinity], 1) - sorted_full)[:, :k]
    gap_before = torch.cat([infinity, gap_after[:, :-1]], 1)
    separated = (gap_after > 10 * atol) & (gap_before > 10 * atol)
    assert torch.equal(indices[separated].cpu(), ref_indices[separated].cpu())
    return values, indices


SHAPES = [(1, 1, 1), (7, 13, 5), (64, 150, 33), (130, 257, 64)]


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_backend_matches_reference(device, backend, metric, shape):
    n, m, dim = shape
    if backend == "triton" and device == "cpu" and n * m > 64 * 150:
        pytest.skip("the Triton interpreter is slow: small shapes only on CPU")
    generator = torch.Generator().manual_seed(n + m)
    x = torch.randn(n, dim, generator=generator).to(device)
    y = torch.randn(m, dim, generator=generator).to(device)
    for k in sorted({1, min(5, m), min(20, m), m}):
        check_against_reference(backend, x, y, k, metric)


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("metric", METRICS)
def test_self_search_excludes_self(device, backend, metric):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(40, 12, generator=generator).to(device)
    for k in (1, 7, 39):
        check_against_reference(backend, x, None, k, metric, exclude_self=True)
    values, indices = run_topk(backend, x, k=1, metric="euclidean")
    assert torch.equal(indices[:, 0].cpu(), torch.arange(40)), "without exclude_self a row's nearest is itself"
    assert_close(values[:, 0], torch.full((40,), 1e-6), atol=1e-6)


@pytest.mark.parametrize("device,backend", device_backend_params())
def test_exact_ties_list_the_smaller_index_first(device, backend):
    generator = torch.Generator().manual_seed(2)
    x = torch.randint(-2, 3, (30, 3), generator=generator).float().to(device)
    y = torch.randint(-2, 3, (70, 3), generator=generator).float().to(device)
    for metric in ("sqeuclidean", "euclidean"):
        values, indices = run_topk(backend, x, y, k=15, metric=metric)
        ref_values, ref_indices = reference_topk(x, y, 15, metric)
        assert torch.equal(indices.cpu(), ref_indices.cpu())
        assert_close(values, ref_values, atol=1e-6)


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_dtypes_and_strides(device, backend, dtype):
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(50, 40, generator=generator).to(device=device, dtype=dtype)
    x, y = base[::2, ::2], base[1:, 1::2]  # strided rows and features
    values, _ = check_against_reference(backend, x, y, 9, "euclidean", atol=1e-9 if dtype == torch.float64 else 2e-4)
    assert values.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


def test_large_blockwise_cpu_matches_reference(monkeypatch):
    if not reidfast.backends()["cpu"].available:
        pytest.skip("native CPU backend not built")
    monkeypatch.setattr(reidfast.ops.topk, "row_block_size", lambda num_cols, target_elements=0: 300)
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(1000, 257, generator=generator)
    y = torch.randn(2100, 257, generator=generator)  # several row blocks
    check_against_reference("cpu", x, y, 21, "euclidean", atol=1e-3)
    check_against_reference("cpu", y, None, 21, "cosine", exclude_self=True, atol=1e-4)


def test_numpy_in_numpy_out():
    x = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    values, indices = reidfast.topk_distance(x, k=3, exclude_self=True)
    assert isinstance(values, np.ndarray) and isinstance(indices, np.ndarray)
    assert values.dtype == np.float32 and indices.dtype == np.int64 and values.shape == (20, 3)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"k": 0}, r"k: expected an integer in \[1, 6\]"),
        ({"k": 7}, r"k: expected an integer in \[1, 6\]"),
        ({"k": 6, "exclude_self": True}, r"k: expected an integer in \[1, 5\]"),
        ({"k": 2.0}, "k: expected an integer"),
        ({"k": 2, "metric": "l1"}, "metric: expected one of"),
        ({"k": 2, "y": torch.randn(4, 3), "exclude_self": True}, "exclude_self: expected y=None"),
        ({"k": 2, "y": torch.randn(4, 5)}, "y: expected 3 features per row"),
    ],
)
def test_bad_input_names_the_argument(kwargs, message):
    x = torch.randn(6, 3)
    with pytest.raises(ValueError, match=message):
        reidfast.topk_distance(x, **kwargs)
