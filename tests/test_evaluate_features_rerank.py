"""rf.evaluate_features(..., rerank=dict(...)): exactly the numbers of rf.evaluate(rf.re_ranking(qf, gf, ...))
(CMC, mAP, mINP, skipped queries; both protocols), without the (Q, G) re-ranked matrix."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import reidfast

needs_native = pytest.mark.skipif(not reidfast.backends()["cpu"].available, reason="native module not built")


def reid_set(seed: int, num_query: int, num_gallery: int, dim: int = 16, num_pids: int = 12, noise: float = 1.3):
    """Confusable identities (so that re-ranking's overlap lists hold many items of other pids), 3 cameras,
    duplicated gallery rows (exact ties), a distractor pid no query has, and query pids absent from the gallery
    (skipped queries)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_pids + 2, dim)) * 1.5
    q_pids = rng.integers(0, num_pids + 1, num_query)  # pid num_pids: never in the gallery
    g_pids = rng.integers(0, num_pids, num_gallery)
    g_pids[::7] = num_pids + 1  # distractors
    query = (centers[q_pids] + noise * rng.normal(size=(num_query, dim))).astype(np.float32)
    gallery = (centers[g_pids] + noise * rng.normal(size=(num_gallery, dim))).astype(np.float32)
    for row in range(3, num_gallery, 5):
        gallery[row] = gallery[rng.integers(0, row)]
    q_camids, g_camids = rng.integers(0, 3, num_query), rng.integers(0, 3, num_gallery)
    q_pids[0], q_camids[0] = g_pids[1], (g_camids[1] + 1) % 3  # at least one query with a match
    query[0] = centers[q_pids[0]] + noise * rng.normal(size=dim)
    return query, gallery, q_pids, g_pids, q_camids, g_camids


def dense_result(query, gallery, labels, rerank, metric, protocol, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        distmat = reidfast.re_ranking(query, gallery, metric=metric, **rerank)
        return reidfast.evaluate(distmat, *labels, protocol=protocol, **kwargs)


def sparse_result(query, gallery, labels, rerank, metric, protocol, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return reidfast.evaluate_features(query, gallery, *labels, metric=metric, protocol=protocol, rerank=rerank,
                                          **kwargs)


def assert_same(result, expected) -> None:
    np.testing.assert_array_equal(np.asarray(result.cmc), np.asarray(expected.cmc))
    assert result.mAP == pytest.approx(expected.mAP, rel=0, abs=1e-12)
    assert result.mINP == pytest.approx(expected.mINP, rel=0, abs=1e-12)
    assert result.num_skipped_queries == expected.num_skipped_queries
    assert result.num_valid_queries == expected.num_valid_queries


SHAPES = [(1, 6), (5, 30), (40, 160), (120, 400)]
RERANKS = [dict(k1=1, k2=1, lambda_value=0.3), dict(k1=5, k2=2, lambda_value=0.0), dict(k1=20, k2=6, lambda_value=0.3),
           dict(k1=20, k2=6, lambda_value=1.0), dict(k1=11, k2=3, lambda_value=0.7)]


@needs_native
@pytest.mark.parametrize("protocol", ["market1501", "cuhk03"])
@pytest.mark.parametrize("rerank", RERANKS, ids=lambda r: "k1{k1}-k2{k2}-l{lambda_value}".format(**r))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"Q{s[0]}xG{s[1]}")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_evaluate_of_dense_rerank(seed, shape, rerank, protocol):
    query, gallery, *labels = reid_set(seed, *shape)
    rerank = dict(rerank, k1=min(rerank["k1"], shape[0] + shape[1] - 1))
    rerank["k2"] = min(rerank["k2"], rerank["k1"])
    expected = dense_result(query, gallery, labels, rerank, "euclidean", protocol)
    assert_same(sparse_result(query, gallery, labels, rerank, "euclidean", protocol), expected)


@needs_native
@pytest.mark.parametrize("metric", ["cosine", "sqeuclidean"])
@pytest.mark.parametrize("protocol", ["market1501", "cuhk03"])
def test_other_metrics(metric, protocol):
    query, gallery, *labels = reid_set(3, 60, 220)
    rerank = dict(k1=15, k2=4, lambda_value=0.3)
    expected = dense_result(query, gallery, labels, rerank, metric, protocol)
    assert_same(sparse_result(query, gallery, labels, rerank, metric, protocol), expected)


@needs_native
def test_float64_torch_inputs_max_rank_chunks_and_defaults():
    query, gallery, *labels = reid_set(4, 50, 180)
    q64, g64 = torch.from_numpy(query.astype(np.float64) + 1e-9), torch.from_numpy(gallery.astype(np.float64))
    expected = dense_result(q64, g64, labels, dict(lambda_value=0.5), "euclidean", "market1501", max_rank=7)
    for chunk_size in (None, 13):
        result = sparse_result(q64, g64, labels, dict(lambda_value=0.5), "euclidean", "market1501", max_rank=7,
                               chunk_size=chunk_size)
        assert_same(result, expected)


@needs_native
def test_cuhk03_draws_follow_the_seed():
    query, gallery, *labels = reid_set(5, 40, 200)
    rerank = dict(k1=10, k2=3, lambda_value=0.3)
    for seed in (0, 7):
        expected = dense_result(query, gallery, labels, rerank, "euclidean", "cuhk03", seed=seed, num_repeats=3)
        assert_same(sparse_result(query, gallery, labels, rerank, "euclidean", "cuhk03", seed=seed, num_repeats=3),
                    expected)


@pytest.mark.parametrize("rerank,match", [
    (3, r"rerank: expected a dict"),
    (dict(k=3), r"rerank: unknown key\(s\) \['k'\]"),
    (dict(k1=0), r"k1"),
    (dict(lambda_value=2.0), r"lambda"),
])
def test_bad_rerank_is_named(rerank, match):
    query, gallery, *labels = reid_set(0, 5, 30)
    with pytest.raises(ValueError, match=match):
        reidfast.evaluate_features(query, gallery, *labels, rerank=rerank)


def test_backends_without_rerank_say_so():
    query, gallery, *labels = reid_set(0, 5, 30)
    with reidfast.use_backend("torch"), pytest.raises(ValueError, match=r"rerank: .*native cpu backend only"):
        reidfast.evaluate_features(torch.from_numpy(query), torch.from_numpy(gallery), *labels, rerank={})


@needs_native
def test_group_with_rerank_is_refused(tmp_path):
    import torch.distributed as dist

    query, gallery, *labels = reid_set(0, 5, 30)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match=r"rerank: not supported with group="):
            reidfast.evaluate_features(query, gallery, *labels, group=dist.group.WORLD, rerank={})
    finally:
        dist.destroy_process_group()


def brute_force_histogram(scores, pivot_offsets, pivot_score, pivot_index, row_labels, item_labels):
    histogram = np.zeros(pivot_index.size, dtype=np.int64)
    for r in range(scores.shape[0]):
        first, last = pivot_offsets[r], pivot_offsets[r + 1]
        for g in range(scores.shape[1]):
            if item_labels[g] == row_labels[r]:
                continue
            slot = sum((pivot_score[p], pivot_index[p]) < (scores[r, g], g) for p in range(first, last))
            if slot < last - first:
                histogram[first + slot] += 1
    return histogram


@needs_native
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lambda_value", [0.0, 0.3, 1.0])
def test_rank_count_score_transform(dtype, lambda_value):
    """rank_count_block with row_max: items ranked by keep + (d^2 / row_max) * blend in float32 (the filter's
    distance bound from bisection must drop no item at or before the last pivot)."""
    from reidfast import _native
    from reidfast.ops.rerank_sparse import rerank_scores

    rng = np.random.default_rng(int(lambda_value * 10) + (dtype == np.float64))
    rows, cols = 6, 300
    distances = np.round(rng.uniform(0, 3, size=(rows, cols)), 2).astype(dtype)  # many exact ties
    distances[:, :3] = [-1e-7, 0.0, 0.0]  # a negative rounding-noise distance scores as its square
    row_max = (np.square(distances).max(1) * rng.uniform(1, 2, rows)).astype(np.float32)
    keep, blend = np.float32(1.0 - lambda_value), np.float32(lambda_value)
    scores = rerank_scores(distances, row_max[:, None], keep, lambda_value)
    item_labels = rng.integers(0, 5, cols)
    row_labels = rng.integers(0, 5, rows)
    counts = rng.integers(0, 6, rows)
    pivot_offsets = np.r_[0, np.cumsum(counts)]
    pivot_index, pivot_score = [], []
    for r in range(rows):  # pivots: scores of own-label items (as a query's matches), sorted by (score, index)
        own = rng.choice(np.flatnonzero(item_labels == row_labels[r]), counts[r], replace=False)
        order = np.lexsort((own, scores[r, own]))
        pivot_index += list(own[order])
        pivot_score += list(scores[r, own[order]])
    pivot_index, pivot_score = np.array(pivot_index, dtype=np.int64), np.array(pivot_score, dtype=np.float32)
    histogram = torch.zeros(pivot_index.size, dtype=torch.int64)
    view = _native.view
    nan_count = _native._C.rank_count_block_cpu(
        view(torch.from_numpy(distances)), 0, view(torch.from_numpy(pivot_offsets)), view(torch.from_numpy(pivot_score)),
        view(torch.from_numpy(pivot_index)), view(torch.from_numpy(row_labels)), view(torch.from_numpy(item_labels)),
        None, 1, view(histogram), view(torch.from_numpy(row_max)), float(keep), float(blend),
    )
    assert nan_count == 0
    expected = brute_force_histogram(scores, pivot_offsets, pivot_score, pivot_index, row_labels, item_labels)
    assert expected.sum() > 0
    np.testing.assert_array_equal(histogram.numpy(), expected)
