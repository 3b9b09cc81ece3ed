"""reidfast.evaluate_features: equal, bit for bit, to evaluate(pairwise_distance(...)) on every backend; the
native counting kernel against its reference; bad input."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import reidfast
from reidfast import _native
from reidfast.reference import evaluate_features as reference

NATIVE = reidfast.backends()["cpu"].available
CPU = pytest.param("cpu", marks=pytest.mark.skipif(not NATIVE, reason="native module not built"))
BACKENDS = [CPU, "torch"]


def make_problem(rng, num_query, num_gallery, dim, num_ids, num_cams=3, integer=False, dtype=torch.float32):
    """Features around per-identity centres; gallery pid -1 and 0 (junk-like and distractor ids, ranked like any
    other pid). integer: small integer features, so every distance is exact and ties are frequent."""
    centres = rng.normal(size=(num_ids, dim))
    q_pids = rng.integers(1, num_ids, num_query)
    g_pids = rng.integers(-1, num_ids, num_gallery)
    query = centres[q_pids] + rng.normal(size=(num_query, dim))
    gallery = centres[np.maximum(g_pids, 0)] + rng.normal(size=(num_gallery, dim))
    if integer:
        query, gallery = np.round(query), np.round(gallery)
    q_camids, g_camids = rng.integers(0, num_cams, num_query), rng.integers(0, num_cams, num_gallery)
    return torch.tensor(query).to(dtype), torch.tensor(gallery).to(dtype), q_pids, g_pids, q_camids, g_camids


def quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def expected(query, gallery, q_pids, g_pids, q_camids, g_camids, metric="euclidean", backend=None, **kwargs):
    """What evaluate_features must equal: rf.evaluate on rf.pairwise_distance (on `backend`'s distance kernel,
    default backends without one): the floats a fused counting kernel must rank."""
    with reidfast.use_backend(backend):
        distmat = reidfast.pairwise_distance(query, gallery, metric)
    return quiet(reidfast.evaluate, distmat.cpu(), q_pids, g_pids, q_camids, g_camids, **kwargs)


def features(backend, *args, **kwargs):
    with reidfast.use_backend(backend):
        return quiet(reidfast.evaluate_features, *args, **kwargs)


def assert_same(result, want):
    np.testing.assert_array_equal(result.cmc, want.cmc)
    assert result.mAP == want.mAP, (result.mAP, want.mAP)
    assert result.mINP == want.mINP, (result.mINP, want.mINP)
    assert (result.num_valid_queries, result.num_skipped_queries) == (want.num_valid_queries, want.num_skipped_queries)
    assert result.num_gallery == want.num_gallery


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("protocol", ["market1501", "cuhk03"])
@pytest.mark.parametrize("integer", [False, True], ids=["real", "ties"])
def test_equals_evaluate_of_pairwise_distance(backend, metric, protocol, integer):
    rng = np.random.default_rng(hash((metric, protocol, integer)) % 2**32)
    problem = make_problem(rng, 40, 600, 12, 25, integer=integer)
    want = expected(*problem, metric=metric, protocol=protocol, max_rank=20)
    for chunk_size in (None, 97):
        result = features(backend, *problem, metric=metric, protocol=protocol, max_rank=20, chunk_size=chunk_size)
        assert_same(result, want)
        assert result.backend == backend and result.protocol == protocol


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtypes(backend, dtype):
    problem = make_problem(np.random.default_rng(3), 30, 400, 16, 20, dtype=dtype)
    assert_same(features(backend, *problem, chunk_size=64), expected(*problem))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 7, None])
def test_cuhk03_seeds_and_repeats(backend, seed):
    problem = make_problem(np.random.default_rng(11), 35, 300, 8, 30, num_cams=2, integer=True)
    kwargs = dict(protocol="cuhk03", num_repeats=3, max_rank=5)
    if seed is None:  # fresh entropy: both sides must draw from an equally seeded generator, so compare twice
        a, b = features(backend, *problem, seed=None, **kwargs), features(backend, *problem, seed=None, **kwargs)
        assert a.mAP == b.mAP  # AP does not depend on the draws
        return
    assert_same(features(backend, *problem, seed=seed, **kwargs), expected(*problem, seed=seed, **kwargs))


def test_equals_reference_on_exact_distances():
    """Integer features: every distance is exact in float32 in any order of operations, so the reference's
    own distances (torch) agree with the kernels' and the whole result equals the reference's."""
    query, gallery, *labels = make_problem(np.random.default_rng(5), 30, 250, 6, 15, integer=True)
    for protocol in ("market1501", "cuhk03"):
        want = quiet(reference.evaluate_features, query, gallery, *labels, metric="sqeuclidean", protocol=protocol)
        for backend in ("reference", "torch") + (("cpu",) if NATIVE else ()):
            result = features(backend, query, gallery, *labels, metric="sqeuclidean", protocol=protocol, chunk_size=50)
            np.testing.assert_array_equal(result.cmc, want.cmc)
            assert (result.mAP, result.mINP) == (want.mAP, want.mINP)


@pytest.mark.parametrize("backend", BACKENDS)
def test_skipped_queries_warning_and_all_skipped(backend):
    query, gallery, q_pids, g_pids, q_camids, g_camids = make_problem(np.random.default_rng(2), 20, 200, 8, 10)
    q_pids = q_pids.copy()
    q_pids[:3] = 1000  # no gallery item of this pid
    g_camids = g_camids.copy()
    g_camids[g_pids == q_pids[3]] = q_camids[3]  # only same-camera items: all junk for query 3
    want = expected(query, gallery, q_pids, g_pids, q_camids, g_camids)
    with reidfast.use_backend(backend), pytest.warns(UserWarning, match=r"\b\d+ of 20 queries have no valid gallery match"):
        result = reidfast.evaluate_features(query, gallery, q_pids, g_pids, q_camids, g_camids)
    assert_same(result, want)
    assert result.num_skipped_queries >= 4
    with reidfast.use_backend(backend), pytest.raises(ValueError, match="all queries have no valid gallery match"):
        reidfast.evaluate_features(query, gallery, np.full(20, 1000), g_pids, q_camids, g_camids)


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_features_as_query_and_gallery(backend):
    """qf is gf: pairwise_distance zeroes the diagonal; those items are each query's junk either way. Also
    one gallery item per block (chunk_size=1)."""
    query, _, q_pids, _, q_camids, _ = make_problem(np.random.default_rng(4), 60, 1, 8, 6)
    want = expected(query, query, q_pids, q_pids, q_camids, q_camids)
    for chunk_size in (1, 16):
        assert_same(features(backend, query, query, q_pids, q_pids, q_camids, q_camids, chunk_size=chunk_size), want)


def test_numpy_inputs_progress_and_max_rank_cut():
    query, gallery, *labels = make_problem(np.random.default_rng(8), 10, 30, 4, 5)
    with pytest.warns(UserWarning, match="smaller than max_rank"):
        want = quiet(reidfast.evaluate, reidfast.pairwise_distance(query, gallery), *labels)
        result = reidfast.evaluate_features(query.numpy(), gallery.numpy(), *labels, chunk_size=7, progress=True)
    assert result.cmc.size == 30
    assert_same(result, want)


# ---------------------------------------------------------------------------------------------------------
# The native counting kernel against its reference.
# ---------------------------------------------------------------------------------------------------------
def random_pivots(rng, distances, max_pivots, col0_range):
    rows = distances.shape[0]
    counts = rng.integers(0, max_pivots + 1, rows)
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    pivot_distance = rng.integers(0, 6, offsets[-1]).astype(distances.dtype)
    pivot_index = rng.integers(0, col0_range, offsets[-1]).astype(np.int64)
    for r in range(rows):  # sorted by (distance, index) within a row
        part = slice(offsets[r], offsets[r + 1])
        order = np.lexsort((pivot_index[part], pivot_distance[part]))
        pivot_distance[part], pivot_index[part] = pivot_distance[part][order], pivot_index[part][order]
    return offsets, pivot_distance, pivot_index


@pytest.mark.skipif(not NATIVE, reason="native module not built")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("cols", [1, 7, 8, 37, 200])
def test_rank_count_kernel_matches_reference(dtype, grouped, cols):
    rng = np.random.default_rng(cols)
    rows, col0, num_gallery = 13, 5, 5 + cols + 3
    distances = rng.integers(0, 7, (rows, cols)).astype(dtype)  # many ties with the pivots
    distances[rng.random((rows, cols)) < 0.05] = np.nan
    distances[0, :] = -0.0
    offsets, pivot_distance, pivot_index = random_pivots(rng, distances, 6, num_gallery)
    num_groups = 4 if grouped else 1
    groups = rng.integers(0, num_groups, num_gallery).astype(np.int64) if grouped else None
    want, want_nan = reference.rank_count_block(distances, col0, offsets, pivot_distance, pivot_index, groups, num_groups)
    histogram = np.zeros(pivot_index.size * num_groups, dtype=np.int64)
    view = lambda a: _native.view(torch.from_numpy(a))  # noqa: E731
    nan_count = _native._C.rank_count_block_cpu(
        view(distances), col0, view(offsets), view(pivot_distance), view(pivot_index), None, None,
        None if groups is None else view(groups), num_groups, view(histogram),
    )
    np.testing.assert_array_equal(histogram, want)
    assert nan_count == want_nan
    # A strided block (a column slice of a wider matrix) and the label exclusion.
    wide = np.zeros((rows, cols + 9), dtype=dtype)
    wide[:, 2 : 2 + cols] = distances
    row_labels = rng.integers(0, 3, rows).astype(np.int64)
    item_labels = rng.integers(0, 3, num_gallery).astype(np.int64)
    histogram[:] = 0
    _native._C.rank_count_block_cpu(
        _native.view(torch.from_numpy(wide)[:, 2 : 2 + cols]), col0, view(offsets), view(pivot_distance),
        view(pivot_index), view(row_labels), view(item_labels), None if groups is None else view(groups), num_groups,
        view(histogram),
    )
    kept = distances.copy()
    kept[item_labels[col0 + np.arange(cols)][None, :] == row_labels[:, None]] = np.inf  # never at or before a pivot
    want_kept, _ = reference.rank_count_block(kept, col0, offsets, pivot_distance, pivot_index, groups, num_groups)
    np.testing.assert_array_equal(histogram, want_kept)


@pytest.mark.skipif(not NATIVE, reason="native module not built")
def test_rank_count_kernel_rejects_bad_arguments():
    view = lambda a: _native.view(torch.from_numpy(a))  # noqa: E731
    distances = np.zeros((2, 3), dtype=np.float32)
    offsets = np.array([0, 1, 5], dtype=np.int64)  # past the 2 pivots
    pivots = np.zeros(2, dtype=np.float32), np.zeros(2, dtype=np.int64)
    with pytest.raises(ValueError, match="pivot_offsets"):
        _native._C.rank_count_block_cpu(view(distances), 0, view(offsets), view(pivots[0]), view(pivots[1]), None,
                                        None, None, 1, view(np.zeros(2, dtype=np.int64)))
    with pytest.raises(ValueError, match="pivot_distance"):
        _native._C.rank_count_block_cpu(view(distances), 0, view(np.array([0, 1, 2], dtype=np.int64)),
                                        view(pivots[0].astype(np.float64)), view(pivots[1]), None, None, None, 1,
                                        view(np.zeros(2, dtype=np.int64)))


# ---------------------------------------------------------------------------------------------------------
# Bad input, as for rf.evaluate.
# ---------------------------------------------------------------------------------------------------------
def test_bad_input():
    query, gallery, q_pids, g_pids, q_camids, g_camids = make_problem(np.random.default_rng(0), 5, 20, 4, 3)
    good = dict(q_pids=q_pids, g_pids=g_pids, q_camids=q_camids, g_camids=g_camids)
    call = lambda q=query, g=gallery, **kw: reidfast.evaluate_features(q, g, **{**good, **kw})  # noqa: E731
    with pytest.raises(ValueError, match=r"g_pids: expected length 20 \(rows of gallery_feats\), got 19"):
        call(g_pids=g_pids[:-1])
    with pytest.raises(ValueError, match=r"q_camids: expected length 5 \(rows of query_feats\), got 4"):
        call(q_camids=q_camids[:-1])
    with pytest.raises(ValueError, match="q_pids: expected integer labels"):
        call(q_pids=q_pids + 0.5)
    with pytest.raises(ValueError, match="gallery_feats: expected 4 features per row"):
        call(g=gallery[:, :3])
    with pytest.raises(ValueError, match="query_feats: expected a floating dtype"):
        call(q=query.to(torch.int64))
    with pytest.raises(ValueError, match="query_feats: expected a 2-D"):
        call(q=query[0])
    with pytest.raises(ValueError, match="gallery_feats: expected at least one row"):
        call(g=gallery[:0], g_pids=g_pids[:0], g_camids=g_camids[:0])
    bad = gallery.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="gallery_feats: expected finite values, got 1 NaN/Inf"):
        call(g=bad)
    bad[3, 1] = float("inf")
    with pytest.raises(ValueError, match="gallery_feats: expected finite values, got 1 NaN/Inf"):
        call(g=bad)
    with pytest.raises(ValueError, match="metric: expected one of"):
        call(metric="manhattan")
    with pytest.raises(ValueError, match="protocol: expected one of"):
        call(protocol="duke")
    with pytest.raises(ValueError, match="chunk_size: expected an integer >= 1"):
        call(chunk_size=0)
    with pytest.raises(ValueError, match="max_rank: expected an integer >= 1"):
        call(max_rank=0)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="gallery_feats: expected the same device as query_feats"):
            call(g=gallery.cuda())


@pytest.mark.parametrize("backend", BACKENDS)
def test_overflowing_distances_raise(backend):
    """Finite features whose float32 distances overflow to NaN (inf - inf): ValueError, as rf.evaluate on the
    NaN distance matrix."""
    query, gallery, *labels = make_problem(np.random.default_rng(0), 6, 40, 4, 3)
    gallery = gallery.clone()
    gallery[5] = 3e38
    with reidfast.use_backend(backend), pytest.raises(ValueError, match="NaN"):
        reidfast.evaluate_features(query, gallery, *labels)


def test_evaluator_ranks_from_features(monkeypatch):
    """ReIDEvaluator without verification ranks through evaluate_features (no Q x G matrix), same numbers."""
    query, gallery, q_pids, g_pids, q_camids, g_camids = make_problem(np.random.default_rng(9), 30, 300, 8, 12)
    evaluator = reidfast.ReIDEvaluator(max_rank=10)
    evaluator.update(query, q_pids, q_camids, True)
    evaluator.update(gallery, g_pids, g_camids, False)
    calls = []
    monkeypatch.setattr("reidfast.evaluation.pairwise_distance", lambda *a, **k: calls.append(a))
    result = quiet(evaluator.compute)
    assert not calls  # no distance matrix was built
    assert_same(result.ranking, expected(query, gallery, q_pids, g_pids, q_camids, g_camids, max_rank=10))
