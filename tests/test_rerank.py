"""k-reciprocal re-ranking: every fast backend (native "cpu", device-resident "torch" and "cuda") against
reidfast.reference.rerank (the published algorithm). The "torch" backend is forced onto CPU tensors here, and
"cuda" (its pipeline with the CUDA Jaccard kernel) runs on them through the CUDA emulator; on a machine with
CUDA both also run on CUDA tensors (and cupy arrays when cupy is installed)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reidfast
from reidfast import _native
from reidfast.ops import rerank as ops_rerank
from reidfast.reference import rerank as ref
from reidfast.reference.distance import pairwise_distance as ref_pairwise

ATOL = 1e-5
needs_native = pytest.mark.skipif(not reidfast.backends()["cpu"].available, reason="native module not built")
# "cuda" is the torch pipeline with the CUDA Jaccard kernel: on CPU tensors through the emulator without a card.
FAST_BACKENDS = [name for name in ("cpu", "torch", "cuda") if reidfast.backends()[name].available
                 and "cpu" in reidfast.backends()[name].devices]


def clustered(rng: np.random.Generator, n: int, dim: int = 16, clusters: int = 6) -> np.ndarray:
    centers = rng.normal(size=(clusters, dim)) * 3.0
    return (centers[rng.integers(0, clusters, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def distances(query: np.ndarray, gallery: np.ndarray, metric: str = "euclidean"):
    q, g = torch.from_numpy(query), torch.from_numpy(gallery)
    return tuple(ref_pairwise(a, b, metric).numpy() for a, b in ((q, g), (q, q), (g, g)))


def run(backend, function, *args, **kwargs):
    with reidfast.use_backend(backend):
        return function(*args, **kwargs)


@pytest.fixture(params=[pytest.param(b, marks=pytest.mark.cuda_emulator) if b == "cuda" else b for b in FAST_BACKENDS])
def backend(request):
    return request.param


SIZES = [(1, 5), (4, 9), (30, 70), (120, 260)]
PARAMS = [(k1, k2) for k1 in (1, 2, 5, 20, 21) for k2 in (1, 6) if k2 <= k1]


@pytest.fixture(scope="module", params=SIZES, ids=lambda s: f"Q{s[0]}xG{s[1]}")
def problem(request):
    num_query, num_gallery = request.param
    rng = np.random.default_rng(num_query * 1000 + num_gallery)
    query, gallery = clustered(rng, num_query), clustered(rng, num_gallery)
    return query, gallery, distances(query, gallery)


@pytest.mark.parametrize("k1,k2", PARAMS)
def test_distances_path_matches_reference(problem, k1, k2, backend):
    query, gallery, (q_g, q_q, g_g) = problem
    if k1 >= len(query) + len(gallery):
        pytest.skip("k1 must be < Q + G")
    for lambda_value in (0.0, 0.3, 1.0):
        expected = ref.re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value)
        got = run(backend, reidfast.re_ranking_distances, q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value)
        assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("k1,k2", PARAMS)
def test_features_path_matches_reference(problem, k1, k2, backend):
    query, gallery, _ = problem
    if k1 >= len(query) + len(gallery):
        pytest.skip("k1 must be < Q + G")
    expected = ref.re_ranking_features(query, gallery, k1=k1, k2=k2, lambda_value=0.3)
    got = run(backend, reidfast.re_ranking, query, gallery, k1=k1, k2=k2, lambda_value=0.3, chunk_size=17)
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def test_jaccard_part_is_exercised(problem, backend):
    """lambda = 1 is the normalised distance alone; lambda = 0 must differ from it (else the test is moot)."""
    _, _, (q_g, q_q, g_g) = problem
    only_distance = run(backend, reidfast.re_ranking_distances, q_g, q_q, g_g, k1=5, k2=1, lambda_value=1.0)
    only_jaccard = run(backend, reidfast.re_ranking_distances, q_g, q_q, g_g, k1=5, k2=1, lambda_value=0.0)
    assert not np.allclose(only_distance, only_jaccard, atol=1e-3)
    assert np.all(only_jaccard >= -1e-6) and np.all(only_jaccard <= 1 + 1e-6)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("chunk_size", [None, 1, 7, 1000])
def test_features_metric_and_chunking(metric, chunk_size, backend):
    rng = np.random.default_rng(7)
    query, gallery = clustered(rng, 25, dim=32), clustered(rng, 80, dim=32)
    expected = ref.re_ranking_features(query, gallery, k1=20, k2=6, lambda_value=0.3, metric=metric)
    got = run(backend, reidfast.re_ranking, query, gallery, metric=metric, chunk_size=chunk_size)
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("k1,k2", [(1, 1), (2, 1), (5, 1), (20, 6), (21, 6)])
def test_query_equals_gallery(k1, k2, backend):
    rng = np.random.default_rng(3)
    x = clustered(rng, 50)
    d = distances(x, x)[0]  # every item has an exact duplicate: distance ties broken by index
    expected = ref.re_ranking(d, d, d, k1=k1, k2=k2)
    got = run(backend, reidfast.re_ranking_distances, d, d, d, k1=k1, k2=k2)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    expected_f = ref.re_ranking_features(x, x, k1=k1, k2=k2)
    np.testing.assert_allclose(run(backend, reidfast.re_ranking, x, x, k1=k1, k2=k2), expected_f, atol=ATOL, rtol=0)


@pytest.mark.parametrize("k1,k2", [(1, 1), (5, 1), (20, 6), (21, 6)])
def test_tie_heavy_asymmetric_and_mixed_dtypes(k1, k2, backend):
    rng = np.random.default_rng(11)
    query, gallery = clustered(rng, 20), clustered(rng, 60)
    q_g, q_q, g_g = distances(query, gallery)
    asym = (q_g, q_q + rng.random(q_q.shape).astype(np.float32), g_g + rng.random(g_g.shape).astype(np.float32))
    ints = tuple(np.round(a * 2).astype(np.int64) for a in (q_g, q_q, g_g))  # many exact ties
    mixed = (q_g.astype(np.float64), q_q, g_g)  # one float64 input: all squared in float64, as published
    halves = tuple(a.astype(np.float16) for a in (q_g, q_q, g_g))
    zeros = (np.zeros_like(q_g), q_q, g_g)  # zero columns: divided by 1, not NaN
    for args in (asym, ints, mixed, halves, zeros):
        expected = ref.re_ranking(*args, k1=k1, k2=k2, lambda_value=0.3)
        got = run(backend, reidfast.re_ranking_distances, *args, k1=k1, k2=k2, lambda_value=0.3, chunk_size=9)
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def test_float32_results_are_near_bit_identical(backend):
    """The same float32 arithmetic (cpu: also the same summation order; torch: weight sums in torch's order):
    agreement to a few ulps, not merely 1e-5."""
    rng = np.random.default_rng(5)
    q_g, q_q, g_g = distances(clustered(rng, 40), clustered(rng, 150))
    expected = ref.re_ranking(q_g, q_q, g_g)
    got = run(backend, reidfast.re_ranking_distances, q_g, q_q, g_g)
    assert np.abs(got - expected).max() <= 1e-6


@needs_native
def test_half_k1_rounds_half_to_even():
    for k1 in range(1, 60):
        assert _native._C.rerank_half_k1(k1) == int(np.around(k1 / 2.0))
    assert [_native._C.rerank_half_k1(k) for k in (1, 5, 7, 21)] == [0, 2, 4, 10]


def test_torch_in_torch_out_and_backends():
    rng = np.random.default_rng(2)
    query, gallery = clustered(rng, 10), clustered(rng, 30)
    q_g, q_q, g_g = distances(query, gallery)
    expected = ref.re_ranking(q_g, q_q, g_g, k1=5, k2=2)
    for backend in ["reference"] + FAST_BACKENDS:
        with reidfast.use_backend(backend):
            out = reidfast.re_ranking_distances(*(torch.from_numpy(a) for a in (q_g, q_q, g_g)), k1=5, k2=2)
            assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (10, 30)
            np.testing.assert_allclose(out.numpy(), expected, atol=ATOL, rtol=0)
            out_f = reidfast.re_ranking(torch.from_numpy(query), torch.from_numpy(gallery), k1=5, k2=2)
            assert isinstance(out_f, torch.Tensor)
            np.testing.assert_allclose(out_f.numpy(), ref.re_ranking_features(query, gallery, k1=5, k2=2), atol=ATOL)
            out_np = reidfast.re_ranking(query, gallery, k1=5, k2=2)
            assert isinstance(out_np, np.ndarray)
    assert set(ops_rerank.RE_RANKING.implementations) == {"cuda", "cpu", "torch", "reference"}


def test_progress_bar_runs(capsys, backend):
    rng = np.random.default_rng(4)
    query, gallery = clustered(rng, 5), clustered(rng, 20)
    got = run(backend, reidfast.re_ranking, query, gallery, k1=4, k2=2, progress=True, chunk_size=3)
    np.testing.assert_allclose(got, ref.re_ranking_features(query, gallery, k1=4, k2=2), atol=ATOL, rtol=0)


def _reference_message(function, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        function(*args, **kwargs)
    return str(info.value)


def _distance_error_cases():
    q_g, q_q, g_g = np.ones((2, 3), np.float32), np.ones((2, 2), np.float32), np.ones((3, 3), np.float32)
    nan = q_q.copy()
    nan[0, 1] = np.nan
    inf = g_g.copy()
    inf[2, 2] = np.inf
    return {
        "ndim": ((np.ones(3), q_q, g_g), {}),
        "dtype": ((q_g.astype(np.complex64), q_q, g_g), {}),
        "strings": ((q_g, np.array([["a", "b"], ["c", "d"]]), g_g), {}),
        "nan": ((q_g, nan, g_g), {}),
        "inf": ((q_g, q_q, inf), {}),
        "q_q shape": ((q_g, np.ones((3, 3)), g_g), {}),
        "g_g shape": ((q_g, q_q, np.ones((2, 2))), {}),
        "k1 zero": ((q_g, q_q, g_g), {"k1": 0, "k2": 1}),
        "k1 = N": ((q_g, q_q, g_g), {"k1": 5, "k2": 1}),
        "k1 float": ((q_g, q_q, g_g), {"k1": 2.0, "k2": 1}),
        "k1 bool": ((q_g, q_q, g_g), {"k1": True, "k2": 1}),
        "k2 zero": ((q_g, q_q, g_g), {"k1": 2, "k2": 0}),
        "k2 > k1": ((q_g, q_q, g_g), {"k1": 2, "k2": 3}),
        "lambda < 0": ((q_g, q_q, g_g), {"k1": 2, "k2": 1, "lambda_value": -0.1}),
        "lambda > 1": ((q_g, q_q, g_g), {"k1": 2, "k2": 1, "lambda_value": 1.5}),
        "lambda str": ((q_g, q_q, g_g), {"k1": 2, "k2": 1, "lambda_value": "0.3"}),
        "lambda bool": ((q_g, q_q, g_g), {"k1": 2, "k2": 1, "lambda_value": True}),
    }


@pytest.mark.parametrize("case", list(_distance_error_cases()))
@pytest.mark.parametrize("backend", ["auto", "reference", "torch"])
def test_distance_validation_messages_match_reference(case, backend):
    args, kwargs = _distance_error_cases()[case]
    message = _reference_message(ref.re_ranking, *args, **kwargs)
    with reidfast.use_backend(backend), pytest.raises(ValueError, match=re.escape(message) + "$"):
        reidfast.re_ranking_distances(*args, **kwargs)


def _feature_error_cases():
    q, g = np.ones((2, 4), np.float32), np.ones((3, 4), np.float32)
    nan = g.copy()
    nan[1, 1] = np.nan
    return {
        "metric": ((q, g), {"metric": "manhattan"}),
        "ndim": ((np.ones(4), g), {}),
        "dtype": ((q, g.astype(np.complex64)), {}),
        "nan": ((q, nan), {}),
        "dim mismatch": ((q, np.ones((3, 5))), {}),
        "k1": ((q, g), {"k1": 5, "k2": 1}),
        "k2": ((q, g), {"k1": 2, "k2": 3}),
        "lambda": ((q, g), {"k1": 2, "k2": 1, "lambda_value": 2}),
    }


@pytest.mark.parametrize("case", list(_feature_error_cases()))
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_feature_validation_messages_match_reference(case, backend):
    args, kwargs = _feature_error_cases()[case]
    message = _reference_message(ref.re_ranking_features, *args, **kwargs)
    with reidfast.use_backend(backend), pytest.raises(ValueError, match=re.escape(message) + "$"):
        reidfast.re_ranking(*args, **kwargs)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_torch_tensor_validation_messages(backend):
    """Tensors are checked where they live (no host copy on the torch backend): same messages."""
    q_g, q_q, g_g = torch.ones(2, 3), torch.ones(2, 2), torch.ones(3, 3)
    cases = [
        ((q_g.to(torch.complex64), q_q, g_g), "q_g_dist: expected real numbers, got dtype complex64"),
        ((q_g, q_q.bool(), g_g), "q_q_dist: expected real numbers, got dtype bool"),
        ((q_g, q_q, torch.ones(3)), "g_g_dist: expected a 2-D distance matrix, got shape (3,)"),
        ((q_g, q_q, g_g.index_fill(0, torch.tensor([1]), float("nan"))), "g_g_dist: expected finite values"),
    ]
    for args, message in cases:
        with reidfast.use_backend(backend), pytest.raises(ValueError, match=re.escape(message)):
            reidfast.re_ranking_distances(*args, k1=2, k2=1)
    inf = torch.ones(3, 4)
    inf[1, 2] = float("inf")
    with reidfast.use_backend(backend), pytest.raises(ValueError, match="gallery_features: expected finite values"):
        reidfast.re_ranking(torch.ones(2, 4), inf, k1=2, k2=1)


@pytest.mark.parametrize("chunk_size", [0, -1, 2.5, True])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_chunk_size_validation(chunk_size, backend):
    q, g = np.ones((2, 4), np.float32), np.ones((3, 4), np.float32)
    with reidfast.use_backend(backend), pytest.raises(ValueError, match="chunk_size"):
        reidfast.re_ranking(q, g, k1=2, k2=1, chunk_size=chunk_size)


@pytest.mark.skipif(not FAST_BACKENDS, reason="no fast re-ranking backend usable on CPU tensors")
@settings(max_examples=40, deadline=None)
@given(
    num_query=st.integers(1, 12),
    num_gallery=st.integers(1, 30),
    levels=st.integers(2, 6),
    k1=st.integers(1, 25),
    k2=st.integers(1, 8),
    lambda_value=st.sampled_from([0.0, 0.3, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_tie_heavy_random_distances_match_reference(num_query, num_gallery, levels, k1, k2, lambda_value, seed):
    """Distances on a few integer levels (most rows full of exact ties, asymmetric q_q/g_g): every fast backend
    breaks ties by item index as the reference does, so the neighbour sets and the results agree."""
    k1 = min(k1, num_query + num_gallery - 1)  # >= 1: at least one query and one gallery item
    k2 = min(k2, k1)
    rng = np.random.default_rng(seed)
    q_g, q_q, g_g = (rng.integers(0, levels, size=s).astype(np.float32)
                     for s in ((num_query, num_gallery), (num_query, num_query), (num_gallery, num_gallery)))
    expected = ref.re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value)
    for backend in FAST_BACKENDS:
        got = run(backend, reidfast.re_ranking_distances, q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value)
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL, err_msg=backend)


def test_device_backends_are_the_default_for_cuda_inputs(monkeypatch):
    """Dispatch: CUDA inputs go to the cuda backend (the device pipeline with the CUDA Jaccard kernel), or to
    the torch backend when the CUDA kernels are not built; CPU inputs keep the native backend when it is
    built, else torch before the O(N^2) reference."""
    from reidfast import _dispatch

    report = _dispatch.backends()
    gpu_report = _dispatch.BackendReport(report)
    gpu_report["torch"] = _dispatch.BackendInfo("torch", True, "simulated CUDA device", ("cpu", "cuda"))
    gpu_report["cuda"] = _dispatch.BackendInfo("cuda", True, "simulated CUDA kernels", ("cuda",))
    monkeypatch.setattr(_dispatch, "backends", lambda: gpu_report)
    assert ops_rerank.RE_RANKING.select(torch.device("cuda", 0))[0] == "cuda"
    gpu_report["cuda"] = _dispatch.BackendInfo("cuda", False, "simulated: not built")
    assert ops_rerank.RE_RANKING.select(torch.device("cuda", 0))[0] == "torch"
    expected_cpu = "cpu" if report["cpu"].available else "torch"
    assert ops_rerank.RE_RANKING.select(torch.device("cpu"))[0] == expected_cpu
    monkeypatch.undo()
    info = reidfast.backends()["torch"]
    assert info.available and "cpu" in info.devices
    assert ("cuda" in info.devices) == torch.cuda.is_available()


def test_cuda_jaccard_kernel_adds_in_the_published_order():
    """The CUDA Jaccard kernel sums each overlap in increasing column order, as the torch pipeline's
    sequential CPU index_add_ does: on CPU tensors (the emulator without a card) the two agree bit for bit,
    also with a gallery of several 8192-item chunks."""
    if "cuda" not in FAST_BACKENDS:
        pytest.skip("the cuda backend does not run on CPU tensors here")
    rng = np.random.default_rng(12)
    for num_query, num_gallery, k1, k2 in ((25, 300, 5, 3), (12, 9000, 4, 2)):
        query = torch.from_numpy(clustered(rng, num_query))
        gallery = torch.from_numpy(clustered(rng, num_gallery))
        via_kernel = run("cuda", reidfast.re_ranking, query, gallery, k1=k1, k2=k2)
        via_torch = run("torch", reidfast.re_ranking, query, gallery, k1=k1, k2=k2)
        assert torch.equal(via_kernel, via_torch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("k1,k2", [(1, 1), (5, 1), (20, 6)])
def test_cuda_tensors_stay_on_the_device(k1, k2):
    rng = np.random.default_rng(9)
    query, gallery = clustered(rng, 60), clustered(rng, 200)
    q_g, q_q, g_g = distances(query, gallery)
    expected = ref.re_ranking(q_g, q_q, g_g, k1=k1, k2=k2)
    cuda = [torch.from_numpy(a).cuda() for a in (q_g, q_q, g_g)]
    out = reidfast.re_ranking_distances(*cuda, k1=k1, k2=k2)
    assert out.device.type == "cuda" and out.dtype == torch.float32
    np.testing.assert_allclose(out.cpu().numpy(), expected, rtol=0, atol=ATOL)
    out_f = reidfast.re_ranking(torch.from_numpy(query).cuda(), torch.from_numpy(gallery).cuda(), k1=k1, k2=k2)
    assert out_f.device.type == "cuda"
    np.testing.assert_allclose(out_f.cpu().numpy(), ref.re_ranking_features(query, gallery, k1=k1, k2=k2), atol=ATOL)
    with pytest.raises(ValueError, match="same device"):
        reidfast.re_ranking_distances(cuda[0], torch.from_numpy(q_q), cuda[2], k1=k1, k2=k2)
    again = reidfast.re_ranking_distances(*cuda, k1=k1, k2=k2)
    if reidfast.backends()["cuda"].available:  # the CUDA Jaccard kernel has no atomics: identical bits
        assert torch.equal(out, again)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cupy_in_cupy_out():
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng(10)
    query, gallery = clustered(rng, 20), clustered(rng, 50)
    out = reidfast.re_ranking(cupy.asarray(query), cupy.asarray(gallery), k1=5, k2=2)
    assert isinstance(out, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(out), ref.re_ranking_features(query, gallery, k1=5, k2=2), atol=ATOL)
