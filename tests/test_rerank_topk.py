"""rf.re_ranking(..., topk=K): bit for bit the K first entries of each row of the dense re-ranked matrix
(values and indices, ascending, ties by gallery index), from features and from distances, on the native cpu
and torch backends (which never build the (Q, G) output) and the reference backend (dense + stable sort)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import reidfast
from reidfast.reference import rerank as ref
from reidfast.reference.distance import pairwise_distance as ref_pairwise

needs_native = pytest.mark.skipif(not reidfast.backends()["cpu"].available, reason="native module not built")


def clustered(rng: np.random.Generator, n: int, dim: int = 16, clusters: int = 6) -> np.ndarray:
    centers = rng.normal(size=(clusters, dim)) * 3.0
    return (centers[rng.integers(0, clusters, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def with_duplicates(rng: np.random.Generator, features: np.ndarray) -> np.ndarray:
    """Every third row a copy of an earlier one: exactly tied distances and scores."""
    features = features.copy()
    for row in range(2, features.shape[0], 3):
        features[row] = features[rng.integers(0, row)]
    return features


def dense_topk(dense: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(dense, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dense, order, axis=1), order


def assert_same_topk(result, dense: np.ndarray, k: int) -> None:
    values, indices = (np.asarray(r) for r in result)
    expected_values, expected_indices = dense_topk(np.asarray(dense), k)
    assert values.dtype == np.float32 and indices.dtype == np.int64
    assert values.shape == indices.shape == (dense.shape[0], k)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_array_equal(values.view(np.int32), expected_values.view(np.int32))  # bit for bit


CASES = [  # (Q, G, k1, k2, lambda, K)
    (1, 1, 1, 1, 0.3, 1),
    (1, 7, 3, 2, 0.3, 7),
    (4, 9, 5, 1, 0.0, 3),
    (30, 70, 20, 6, 0.3, 10),
    (30, 70, 21, 6, 1.0, 70),
    (60, 250, 20, 6, 0.5, 100),
    (120, 300, 10, 3, 0.3, 1),
]


@needs_native
@pytest.mark.parametrize("metric", ["euclidean", "cosine", "sqeuclidean"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "Q{}xG{}-k1{}-k2{}-l{}-K{}".format(*c))
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("duplicates", [False, True], ids=["distinct", "duplicates"])
def test_features_topk_equals_dense_rows(metric, case, seed, duplicates):
    num_query, num_gallery, k1, k2, lambda_value, k = case
    rng = np.random.default_rng(seed * 7919 + num_query * 1000 + num_gallery)
    query, gallery = clustered(rng, num_query), clustered(rng, num_gallery)
    if duplicates:
        gallery = with_duplicates(rng, gallery)
        query[::2] = gallery[rng.integers(0, num_gallery, query[::2].shape[0])]  # queries equal to gallery items
    with reidfast.use_backend("cpu"):
        dense = reidfast.re_ranking(query, gallery, k1, k2, lambda_value, metric=metric)
        result = reidfast.re_ranking(query, gallery, k1, k2, lambda_value, metric=metric, topk=k)
    assert_same_topk(result, dense, k)


@needs_native
@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_topk_blockwise_matches_dense_with_the_same_blocks(chunk_size):
    rng = np.random.default_rng(5)
    query, gallery = clustered(rng, 25), with_duplicates(rng, clustered(rng, 90))
    with reidfast.use_backend("cpu"):
        dense = reidfast.re_ranking(query, gallery, 20, 6, 0.3, chunk_size=chunk_size)
        result = reidfast.re_ranking(query, gallery, 20, 6, 0.3, chunk_size=chunk_size, topk=15)
    assert_same_topk(result, dense, 15)


@needs_native
def test_float64_and_torch_inputs_answer_in_kind():
    rng = np.random.default_rng(11)
    query, gallery = clustered(rng, 20).astype(np.float64), clustered(rng, 60).astype(np.float64)
    with reidfast.use_backend("cpu"):
        dense = reidfast.re_ranking(query, gallery, 10, 4, 0.3)
        values, indices = reidfast.re_ranking(query, gallery, 10, 4, 0.3, topk=8)
        assert_same_topk((values, indices), dense, 8)
        tensors = reidfast.re_ranking(torch.from_numpy(query), torch.from_numpy(gallery), 10, 4, 0.3, topk=8)
    assert all(isinstance(t, torch.Tensor) for t in tensors)
    assert tensors[0].dtype == torch.float32 and tensors[1].dtype == torch.int64
    np.testing.assert_array_equal(tensors[1].numpy(), indices)
    np.testing.assert_array_equal(tensors[0].numpy(), values)


@needs_native
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lambda_value", [0.0, 0.3, 1.0])
def test_distances_topk_equals_dense_rows(dtype, lambda_value):
    rng = np.random.default_rng(3)
    query, gallery = clustered(rng, 40), with_duplicates(rng, clustered(rng, 120))
    q, g = torch.from_numpy(query), torch.from_numpy(gallery)
    q_g, q_q, g_g = (ref_pairwise(a, b, "euclidean").numpy().astype(dtype) for a, b in ((q, g), (q, q), (g, g)))
    with reidfast.use_backend("cpu"):
        dense = reidfast.re_ranking_distances(q_g, q_q, g_g, 20, 6, lambda_value)
        result = reidfast.re_ranking_distances(q_g, q_q, g_g, 20, 6, lambda_value, topk=30)
    assert_same_topk(result, dense, 30)


def test_reference_backend_topk_is_the_sorted_reference():
    rng = np.random.default_rng(4)
    query, gallery = clustered(rng, 10), clustered(rng, 40)
    with reidfast.use_backend("reference"):
        result = reidfast.re_ranking(query, gallery, 8, 3, 0.3, topk=12)
    assert_same_topk(result, ref.re_ranking_features(query, gallery, k1=8, k2=3, lambda_value=0.3), 12)


@needs_native
def test_overlap_items_are_scored_explicitly():
    """The top-k must use the Jaccard term: with lambda 0 every non-overlapping item scores exactly 1, so the
    first entries (score < 1) are all overlap items; a top-k by distance alone would give other values."""
    rng = np.random.default_rng(8)
    query, gallery = clustered(rng, 15), clustered(rng, 80)
    with reidfast.use_backend("cpu"):
        values, _ = reidfast.re_ranking(query, gallery, 20, 6, 0.0, topk=5)
    assert (values < 1.0).all()


@pytest.mark.parametrize("topk", [0, -1, 41, 2.5, True, "3"])
def test_bad_topk_is_named(topk):
    rng = np.random.default_rng(0)
    query, gallery = clustered(rng, 5), clustered(rng, 40)
    with pytest.raises(ValueError, match=r"topk: expected an integer 1 <= topk <= 40"):
        reidfast.re_ranking(query, gallery, 4, 2, 0.3, topk=topk)


@pytest.mark.cuda_emulator
def test_backends_without_topk_say_so():
    if not reidfast.backends()["cuda"].available or "cpu" not in reidfast.backends()["cuda"].devices:
        pytest.skip("the cuda backend does not run on CPU tensors here (REIDFAST_EMULATE_CUDA=1 with the emulator)")
    rng = np.random.default_rng(0)
    query, gallery = torch.from_numpy(clustered(rng, 5)), torch.from_numpy(clustered(rng, 20))
    with reidfast.use_backend("cuda"), pytest.raises(ValueError, match=r"topk: the 'cuda' re-ranking backend"):
        reidfast.re_ranking(query, gallery, 4, 2, 0.3, topk=3)


@pytest.mark.parametrize("kind", ["features", "distances"])
@pytest.mark.parametrize("lambda_value", [0.0, 0.3])
def test_torch_backend_topk_equals_its_dense_rows(kind, lambda_value):
    """The torch backend (device-resident; forced onto CPU tensors here, where its sums are deterministic)."""
    rng = np.random.default_rng(6)
    query, gallery = torch.from_numpy(clustered(rng, 30)), torch.from_numpy(with_duplicates(rng, clustered(rng, 110)))
    with reidfast.use_backend("torch"):
        if kind == "features":
            dense = reidfast.re_ranking(query, gallery, 20, 6, lambda_value, chunk_size=8)
            result = reidfast.re_ranking(query, gallery, 20, 6, lambda_value, chunk_size=8, topk=25)
        else:
            q_g, q_q, g_g = (ref_pairwise(a, b, "euclidean") for a, b in ((query, gallery), (query, query),
                                                                          (gallery, gallery)))
            dense = reidfast.re_ranking_distances(q_g, q_q, g_g, 20, 6, lambda_value, chunk_size=8)
            result = reidfast.re_ranking_distances(q_g, q_q, g_g, 20, 6, lambda_value, chunk_size=8, topk=25)
    assert all(isinstance(t, torch.Tensor) for t in result)
    assert_same_topk(result, dense.numpy(), 25)
