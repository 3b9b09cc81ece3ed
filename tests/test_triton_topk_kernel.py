"""Triton fused distance + row top-k kernel against the reference: reidfast.reference.distance.pairwise_distance
followed by a stable ascending sort, first k columns. Odd shapes, every metric and dtype, k from 1 to MAX_K
(K_PAD above k, K_PAD equal to and below the column tile), exclude_self, strided inputs, the exact self-distance
when x and y are the same memory, exact ties (integer features: values and indices must match exactly, the
smaller column first), and argument checks.

Random features: values must match within a tolerance (the kernel and torch sum in different orders), and
indices wherever the reference neighbours are separated by more than that tolerance.

Runs on CPU tensors under TRITON_INTERPRET=1 (set by conftest.py without CUDA), on CUDA tensors otherwise.
"""
from __future__ import annotations

import zlib

import pytest
import torch

pytest.importorskip("triton")

from reidfast.reference.distance import METRICS, pairwise_distance  # noqa: E402
from reidfast.kernels.triton import topk as topk_module  # noqa: E402
from reidfast.kernels.triton.topk import MAX_K, topk_distance  # noqa: E402

from conftest import TRITON_TEST_DEVICE  # noqa: E402

pytestmark = pytest.mark.triton

DEVICE = TRITON_TEST_DEVICE
if DEVICE is None:
    pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# Kernel and reference see the same (rounded) inputs and differ only in summation order: relative to
# max |x|^2 + max |y|^2 (1 for cosine); scores are squared distances for euclidean.
RTOL = {torch.float32: 2e-6, torch.float16: 2e-6, torch.bfloat16: 2e-6, torch.float64: 1e-13}


def features(shape, dtype, generator, offset=0.0):
    return (torch.randn(shape, generator=generator) + offset).to(dtype).to(DEVICE)


def reference_topk(x, y, k, metric, exclude_self=False):
    """(sorted distances (N, M), their columns (N, M)) from the reference; the caller takes the first k."""
    distances = pairwise_distance(x.cpu(), y.cpu(), metric=metric)
    if exclude_self:
        diagonal = torch.arange(min(distances.shape))
        distances[diagonal, diagonal] = torch.inf
    values, indices = torch.sort(distances, dim=1, stable=True)
    return distances, values, indices


def check_topk(x, y, k, metric, exclude_self=False, exact=False, min_clear=0.0):
    """Run the kernel and compare with the reference: bit-exact when `exact`, else as the module docstring says
    (with at least a fraction `min_clear` of the positions clear enough to compare indices)."""
    values, indices = topk_distance(x, y, k, metric, exclude_self)
    out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    assert values.shape == (x.shape[0], k) and indices.shape == (x.shape[0], k)
    assert values.dtype == out_dtype and indices.dtype == torch.int64
    assert values.device == x.device and indices.device == x.device
    values, indices = values.cpu(), indices.cpu()
    distances, ref_values, ref_indices = reference_topk(x, y, k, metric, exclude_self)

    # each row sorted by (value, index), indices distinct and in range, self skipped when asked
    later, earlier = values[:, 1:], values[:, :-1]
    ordered = (later > earlier) | ((later == earlier) & (indices[:, 1:] > indices[:, :-1]))
    assert bool(ordered.all()), "rows not sorted by (distance, column)"
    assert bool(((indices >= 0) & (indices < y.shape[0])).all())
    sorted_indices = indices.sort(dim=1).values
    assert bool((sorted_indices[:, 1:] != sorted_indices[:, :-1]).all()), "a column listed twice"
    if exclude_self:
        assert not bool((indices == torch.arange(x.shape[0])[:, None]).any()), "self not excluded"

    if exact:
        torch.testing.assert_close(values, ref_values[:, :k], rtol=0, atol=0)
        torch.testing.assert_close(indices, ref_indices[:, :k], rtol=0, atol=0)
        return values, indices

    def score(t):  # euclidean distances are compared as squares: sqrt amplifies errors near the clamp
        return t.double() * t.double() if metric == "euclidean" else t.double()

    all_scores = score(ref_values)
    # rounding error of |x|^2 + |y|^2 - 2 x.y scales with the norms, not with the (possibly cancelled) result
    norms = float((x.cpu().double() ** 2).sum(1).max() + (y.cpu().double() ** 2).sum(1).max())
    tolerance = RTOL[x.dtype] * (1.0 if metric == "cosine" else max(1.0, norms))
    assert float((score(values) - all_scores[:, :k]).abs().max()) <= tolerance
    # every returned column really is at the returned distance
    assert float((score(distances.gather(1, indices)) - score(values)).abs().max()) <= tolerance
    # indices agree wherever the reference order is unambiguous (gaps to both neighbours above 2 tolerances)
    inf = torch.full((x.shape[0], 1), torch.inf, dtype=torch.float64)
    gaps = torch.cat([inf, all_scores[:, 1:] - all_scores[:, :-1], inf], dim=1)
    clear = (gaps[:, :k] > 2 * tolerance) & (gaps[:, 1:k + 1] > 2 * tolerance)
    assert torch.equal(indices[clear], ref_indices[:, :k][clear]), "indices differ where the order is clear"
    assert float(clear.double().mean()) >= min_clear, "too few positions to compare indices"
    return values, indices


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 13, 5)], ids=["1x1x1", "7x13x5"])
def test_small_shapes(shape, metric, dtype):
    generator = torch.Generator().manual_seed(zlib.crc32(repr((shape, metric, dtype)).encode()))
    n, m, d = shape
    x, y = features((n, d), dtype, generator), features((m, d), dtype, generator)
    for k in sorted({1, 5, m} & set(range(1, m + 1))):
        check_topk(x, y, k, metric, min_clear=0.5 if dtype in (torch.float32, torch.float64) else 0.0)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("k", [1, 5, 20, MAX_K])
def test_larger_float32(metric, k):
    generator = torch.Generator().manual_seed(k)
    x, y = features((100, 33), torch.float32, generator), features((150, 33), torch.float32, generator)
    check_topk(x, y, k, metric, min_clear=0.9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_larger_other_dtypes(dtype):
    generator = torch.Generator().manual_seed(3)
    x, y = features((40, 33), dtype, generator), features((150, 33), dtype, generator)
    check_topk(x, y, 20, "euclidean", min_clear=0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_max_k(dtype):
    generator = torch.Generator().manual_seed(4)
    x, y = features((5, 9), dtype, generator), features((MAX_K + 3, 9), dtype, generator)
    check_topk(x, y, MAX_K, "sqeuclidean")


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_exclude_self(metric, dtype):
    generator = torch.Generator().manual_seed(5)
    x = features((37, 6), dtype, generator)
    for k in (1, 7, 36):
        check_topk(x, x, k, metric, exclude_self=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_same_memory_gives_exact_zero_self_distance(dtype):
    # far from the origin, |x|^2 + |x|^2 - 2 x.x does not cancel exactly with tl.dot: it is forced to 0
    generator = torch.Generator().manual_seed(6)
    x = features((40, 17), dtype, generator, offset=30.0)
    for metric in ("sqeuclidean", "euclidean"):
        values, indices = topk_distance(x, x, 3, metric)
        assert torch.equal(indices[:, 0].cpu(), torch.arange(40))
        clamped = torch.tensor(0.0 if metric == "sqeuclidean" else 1e-12, dtype=values.dtype)
        expected = clamped if metric == "sqeuclidean" else clamped.sqrt()
        assert torch.equal(values[:, 0].cpu(), expected.expand(40))
    # a copy is not the same memory: the self distance is whatever the arithmetic gives (checked loosely)
    check_topk(x, x.clone(), 3, "sqeuclidean")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided_inputs(dtype):
    generator = torch.Generator().manual_seed(7)
    x_base = features((23, 40), dtype, generator)
    y_base = features((2 * 31, 19), dtype, generator)
    x = x_base[:, 5:24]  # row stride 40
    y = y_base[::2]  # row stride 38
    assert not x.is_contiguous() and not y.is_contiguous()
    for metric in METRICS:
        check_topk(x, y, 6, metric)
    # a column-strided view is refused, not silently misread
    with pytest.raises(ValueError, match="x"):
        topk_distance(x_base[:, ::2], y_base[:, :20], 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_exact_ties(metric, dtype):
    # integer features in {0, 1, 2}: every distance is exact in every dtype and many are equal; the kernel
    # must list equal distances by increasing column across column tiles, like a stable sort
    generator = torch.Generator().manual_seed(8)
    x = torch.randint(0, 3, (35, 4), generator=generator).to(dtype).to(DEVICE)
    y = torch.randint(0, 3, (50, 4), generator=generator).to(dtype).to(DEVICE)
    for k in (1, 3, 5, 16, 50):
        check_topk(x, y, k, metric, exact=True)
    check_topk(y, y, 9, metric, exclude_self=True, exact=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_cosine_ties_from_duplicate_rows(dtype):
    # duplicated (and rescaled) gallery rows are at exactly the same kernel distance: smaller column first
    generator = torch.Generator().manual_seed(9)
    x = features((20, 8), dtype, generator)
    base = features((10, 8), dtype, generator)
    y = torch.cat([base, base, 2 * base, base])[torch.randperm(40, generator=generator).to(DEVICE)]
    values, indices = check_topk(x, y, 12, "cosine")
    # the reference may round duplicates differently; the kernel's own ties must still be broken by index
    same = values[:, 1:] == values[:, :-1]
    assert bool(same.any()), "expected exact ties among duplicated rows"
    assert bool((indices[:, 1:][same] > indices[:, :-1][same]).all())


def test_cosine_zero_vectors():
    x = torch.zeros((3, 4), device=DEVICE)
    y = torch.randn((6, 4), generator=torch.Generator().manual_seed(10)).to(DEVICE)
    y[2] = 0.0
    values, indices = check_topk(x, y, 6, "cosine")
    assert torch.equal(values, torch.ones_like(values)) and torch.equal(indices[0], torch.arange(6))


def test_empty_rows():
    values, indices = topk_distance(torch.empty((0, 5), device=DEVICE), torch.randn((4, 5), device=DEVICE), 2)
    assert values.shape == (0, 2) and indices.shape == (0, 2)


def test_rejects_bad_arguments():
    x = torch.randn((4, 3), device=DEVICE)
    y = torch.randn((6, 3), device=DEVICE)
    with pytest.raises(ValueError, match="metric"):
        topk_distance(x, y, 2, "manhattan")
    for k in (0, 7, -1, 2.0, True, None):
        with pytest.raises(ValueError, match="k: expected an integer"):
            topk_distance(x, y, k)
    with pytest.raises(ValueError, match="k: expected an integer"):
        topk_distance(x, x, 4, exclude_self=True)
    big = torch.randn((MAX_K + 10, 3), device=DEVICE)
    with pytest.raises(ValueError, match="MAX_K"):
        topk_distance(x, big, MAX_K + 1)
    with pytest.raises(ValueError, match="y"):
        topk_distance(x, y.double(), 2)
    with pytest.raises(ValueError, match="y"):
        topk_distance(x, torch.randn((6, 4), device=DEVICE), 2)
    with pytest.raises(ValueError, match="x"):
        topk_distance(x.to(torch.int64), y.to(torch.int64), 2)
    with pytest.raises(ValueError, match="x"):
        topk_distance(x[0], y, 2)
    with pytest.raises(ValueError, match="y"):
        topk_distance(x, y.numpy() if DEVICE == "cpu" else y.cpu(), 2)
    assert topk_distance(x, y, torch.tensor(3).item())[0].shape == (4, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_negative_cosine_distances_rank_first(dtype):
    # parallel vectors: 1 - x.y / (|x| |y|) rounds to small values of either sign; negative scores must rank
    # below zero and each other in float order (the sign-aware key), and decode to the same values
    generator = torch.Generator().manual_seed(11)
    x = features((64, 7), dtype, generator)
    y = torch.cat([x * scale for scale in (1.0, 2.0, 3.0, 0.5, 5.0, 7.0, 0.25, 11.0)])
    values, _ = check_topk(x, y, 8, "cosine")
    assert int((values < 0).sum(1).max()) >= 2, "precondition: rows with several negative cosine distances"


def test_column_indices_beyond_a_few_thousand():
    # nearest columns far down a long gallery: the column survives the key packing and many column tiles
    generator = torch.Generator().manual_seed(12)
    x = features((3, 3), torch.float32, generator)
    y = features((5000, 3), torch.float32, generator, offset=50.0)
    y[4999], y[4321] = x[0], x[1] + 0.01
    values, indices = check_topk(x, y, 2, "sqeuclidean")
    assert int(indices[0, 0]) == 4999 and int(indices[1, 0]) == 4321


@pytest.mark.skipif(DEVICE == "cuda", reason="compiled kernels always use the xor_sum formulation")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_xor_sum_network_in_the_interpreter(monkeypatch, dtype):
    # the interpreter normally finds bitonic partners by permute/split/join; compiled kernels use
    # x ^ xor_sum(x): run that formulation here too (slow under the interpreter, so one small case)
    monkeypatch.setattr(topk_module, "_SWAP_BY_PERMUTE", False)
    generator = torch.Generator().manual_seed(13)
    x = torch.randint(0, 3, (9, 4), generator=generator).to(dtype)
    y = torch.randint(0, 3, (20, 4), generator=generator).to(dtype)
    check_topk(x, y, 5, "sqeuclidean", exact=True)
