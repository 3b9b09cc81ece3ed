"""k-reciprocal re-ranking: the native backend against reidfast.reference.rerank (the published algorithm)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import reidfast
from reidfast import _native
from reidfast.ops import rerank as ops_rerank
from reidfast.reference import rerank as ref
from reidfast.reference.distance import pairwise_distance as ref_pairwise

ATOL = 1e-5
needs_native = pytest.mark.skipif(not reidfast.backends()["cpu"].available, reason="native module not built")


def clustered(rng: np.random.Generator, n: int, dim: int = 16, clusters: int = 6) -> np.ndarray:
    centers = rng.normal(size=(clusters, dim)) * 3.0
    return (centers[rng.integers(0, clusters, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def distances(query: np.ndarray, gallery: np.ndarray, metric: str = "euclidean"):
    q, g = torch.from_numpy(query), torch.from_numpy(gallery)
    return tuple(ref_pairwise(a, b, metric).numpy() for a, b in ((q, g), (q, q), (g, g)))


def native(function, *args, **kwargs):
    with reidfast.use_backend("cpu"):
        return function(*args, **kwargs)


SIZES = [(1, 5), (4, 9), (30, 70), (120, 260)]
PARAMS = [(k1, k2) for k1 in (1, 2, 5, 20, 21) for k2 in (1, 6) if k2 <= k1]


@pytest.fixture(scope="module", params=SIZES, ids=lambda s: f"Q{s[0]}xG{s[1]}")
def problem(request):
    num_query, num_gallery = request.param
    rng = np.random.default_rng(num_query * 1000 + num_gallery)
    query, gallery = clustered(rng, num_query), clustered(rng, num_gallery)
    return query, gallery, distances(query, gallery)


@needs_native
@pytest.mark.parametrize("k1,k2", PARAMS)
def test_distances_path_matches_reference(problem, k1, k2):
    query, gallery, (q_g, q_q, g_g) = problem
    if k1 >= len(query) + len(gallery):
        pytest.skip("k1 must be < Q + G")
    for lambda_value in (0.0, 0.3, 1.0):
        expected = ref.re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value)
        got = native(reidfast.re_ranking_distances, q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value)
        assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


@needs_native
@pytest.mark.parametrize("k1,k2", PARAMS)
def test_features_path_matches_reference(problem, k1, k2):
    query, gallery, _ = problem
    if k1 >= len(query) + len(gallery):
        pytest.skip("k1 must be < Q + G")
    expected = ref.re_ranking_features(query, gallery, k1=k1, k2=k2, lambda_value=0.3)
    got = native(reidfast.re_ranking, query, gallery, k1=k1, k2=k2, lambda_value=0.3, chunk_size=17)
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


@needs_native
def test_jaccard_part_is_exercised(problem):
    """lambda = 1 is the normalised distance alone; lambda = 0 must differ from it (else the test is moot)."""
    _, _, (q_g, q_q, g_g) = problem
    only_distance = native(reidfast.re_ranking_distances, q_g, q_q, g_g, k1=5, k2=1, lambda_value=1.0)
    only_jaccard = native(reidfast.re_ranking_distances, q_g, q_q, g_g, k1=5, k2=1, lambda_value=0.0)
    assert not np.allclose(only_distance, only_jaccard, atol=1e-3)
    assert np.all(only_jaccard >= -1e-6) and np.all(only_jaccard <= 1 + 1e-6)


@needs_native
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("chunk_size", [None, 1, 7, 1000])
def test_features_metric_and_chunking(metric, chunk_size):
    rng = np.random.default_rng(7)
    query, gallery = clustered(rng, 25, dim=32), clustered(rng, 80, dim=32)
    expected = ref.re_ranking_features(query, gallery, k1=20, k2=6, lambda_value=0.3, metric=metric)
    got = native(reidfast.re_ranking, query, gallery, metric=metric, chunk_size=chunk_size)
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


@needs_native
@pytest.mark.parametrize("k1,k2", [(1, 1), (2, 1), (5, 1), (20, 6), (21, 6)])
def test_query_equals_gallery(k1, k2):
    rng = np.random.default_rng(3)
    x = clustered(rng, 50)
    d = distances(x, x)[0]  # every item has an exact duplicate: distance ties broken by index
    expected = ref.re_ranking(d, d, d, k1=k1, k2=k2)
    np.testing.assert_allclose(native(reidfast.re_ranking_distances, d, d, d, k1=k1, k2=k2), expected, atol=ATOL, rtol=0)
    expected_f = ref.re_ranking_features(x, x, k1=k1, k2=k2)
    np.testing.assert_allclose(native(reidfast.re_ranking, x, x, k1=k1, k2=k2), expected_f, atol=ATOL, rtol=0)


@needs_native
@pytest.mark.parametrize("k1,k2", [(1, 1), (5, 1), (20, 6), (21, 6)])
def test_tie_heavy_asymmetric_and_mixed_dtypes(k1, k2):
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
        got = native(reidfast.re_ranking_distances, *args, k1=k1, k2=k2, lambda_value=0.3, chunk_size=9)
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


@needs_native
def test_float32_results_are_near_bit_identical():
    """Same float32 arithmetic and summation order: agreement to a few ulps, not merely 1e-5."""
    rng = np.random.default_rng(5)
    q_g, q_q, g_g = distances(clustered(rng, 40), clustered(rng, 150))
    expected = ref.re_ranking(q_g, q_q, g_g)
    got = native(reidfast.re_ranking_distances, q_g, q_q, g_g)
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
    for backend in ("reference",) + (("cpu",) if reidfast.backends()["cpu"].available else ()):
        with reidfast.use_backend(backend):
            out = reidfast.re_ranking_distances(*(torch.from_numpy(a) for a in (q_g, q_q, g_g)), k1=5, k2=2)
            assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (10, 30)
            np.testing.assert_allclose(out.numpy(), expected, atol=ATOL, rtol=0)
            out_f = reidfast.re_ranking(torch.from_numpy(query), torch.from_numpy(gallery), k1=5, k2=2)
            assert isinstance(out_f, torch.Tensor)
            np.testing.assert_allclose(out_f.numpy(), ref.re_ranking_features(query, gallery, k1=5, k2=2), atol=ATOL)
            out_np = reidfast.re_ranking(query, gallery, k1=5, k2=2)
            assert isinstance(out_np, np.ndarray)
    assert set(ops_rerank.RE_RANKING.implementations) == {"cpu", "reference"}


@needs_native
def test_progress_bar_runs(capsys):
    rng = np.random.default_rng(4)
    query, gallery = clustered(rng, 5), clustered(rng, 20)
    got = native(reidfast.re_ranking, query, gallery, k1=4, k2=2, progress=True, chunk_size=3)
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
@pytest.mark.parametrize("backend", ["auto", "reference"])
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
def test_feature_validation_messages_match_reference(case):
    args, kwargs = _feature_error_cases()[case]
    message = _reference_message(ref.re_ranking_features, *args, **kwargs)
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        reidfast.re_ranking(*args, **kwargs)


@pytest.mark.parametrize("chunk_size", [0, -1, 2.5, True])
def test_chunk_size_validation(chunk_size):
    q, g = np.ones((2, 4), np.float32), np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="chunk_size"):
        reidfast.re_ranking(q, g, k1=2, k2=1, chunk_size=chunk_size)
