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
