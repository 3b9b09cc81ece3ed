"""Tests of the numpy k-reciprocal re-ranking reference (reidfast/reference/rerank.py).

The reference is checked four ways: small cases derived by hand, values produced by the published
torchreid code (``torchreid/utils/rerank.py``), agreement with a second, dense-matrix formulation written
below, and properties (lambda extremes, ranges, ties, layouts, argument errors).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reidfast.reference.distance import pairwise_distance
from reidfast.reference.rerank import re_ranking, re_ranking_features


# ----------------------------------------------------------------------------------------------------
# helpers


def split_blocks(joint: np.ndarray, num_query: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, N) joint distances -> q_g (Q, G), q_q (Q, Q), g_g (G, G)."""
    return joint[:num_query, num_query:], joint[:num_query, :num_query], joint[num_query:, num_query:]


def euclidean(points: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, N) float64 Euclidean distances by explicit differences (exact zeros on duplicates)."""
    diff = points[:, None, :] - points[None, :, :]
    return np.sqrt((diff * diff).sum(-1))


def clustered_features(rng: np.random.Generator, num_items: int, dim: int = 16) -> np.ndarray:
    """(num_items, dim) float32 features around about num_items / 5 identity centres."""
    num_ids = max(1, num_items // 5)
    centres = rng.normal(size=(num_ids, dim))
    ids = rng.integers(0, num_ids, size=num_items)
    return (centres[ids] + 0.5 * rng.normal(size=(num_items, dim))).astype(np.float32)


def clustered_distances(seed: int, num_query: int, num_gallery: int):
    """float32 q_g, q_q, g_g from clustered features (through the library's pairwise_distance)."""
    rng = np.random.default_rng(seed)
    features = torch.from_numpy(clustered_features(rng, num_query + num_gallery))
    joint = pairwise_distance(features, features).numpy()
    return split_blocks(joint, num_query)


def half_of_k1_rounded_half_to_even(k1: int) -> int:
    """round(k1 / 2) with ties to even, spelled out: 1 -> 0, 5 -> 2, 7 -> 4, 21 -> 10."""
    half, odd = divmod(k1, 2)
    if not odd:
        return half
    return half if half % 2 == 0 else half + 1


def dense_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value, stats: dict | None = None) -> np.ndarray:
    """A second formulation of re-ranking, written independently of the reference, in float64.

    Neighbour sets are python sets over rows sorted by (distance, index); V is a dense float64 matrix; the
    query expansion is a selection-matrix product; the Jaccard distance is 1 - sum(min) / sum(max) over
    all query x gallery pairs (the reference uses 1 - s / (2 - s), equal when V's rows sum to 1). Two
    empty neighbourhoods (sum(max) = 0) count as disjoint, distance 1, as in the published code.
    Only the float32 normalised distance is shared bit for bit with the reference, so ranks coincide.
    """
    q_g, q_q, g_g = (np.asarray(a) for a in (q_g, q_q, g_g))
    num_query, num_gallery = q_g.shape
    n = num_query + num_gallery
    input_dtype = np.float64 if np.result_type(q_g, q_q, g_g) == np.float64 else np.float32
    joint = np.empty((n, n), dtype=input_dtype)
    joint[:num_query, :num_query] = q_q
    joint[:num_query, num_query:] = q_g
    joint[num_query:, :num_query] = q_g.T
    joint[num_query:, num_query:] = g_g
    squared = (joint * joint).astype(np.float32)
    dist = np.empty((n, n), dtype=np.float32)
    for i in range(n):  # row i of the normalised matrix is column i over its maximum
        column = squared[:, i]
        peak = column.max()
        dist[i] = column / (peak if peak > 0 else np.float32(1))
    order = [sorted(range(n), key=lambda j, row=dist[i]: (row[j], j)) for i in range(n)]

    def reciprocal_sets(k: int) -> list[set[int]]:
        first = [set(o[: k + 1]) for o in order]
        return [{j for j in first[i] if i in first[j]} for i in range(n)]

    reciprocal = reciprocal_sets(k1)
    half = reciprocal_sets(half_of_k1_rounded_half_to_even(k1))
    v = np.zeros((n, n))
    accepted = rejected = grown_rows = 0
    for i in range(n):
        expanded = set(reciprocal[i])
        for candidate in reciprocal[i]:
            if 3 * len(half[candidate] & reciprocal[i]) > 2 * len(half[candidate]):
                expanded |= half[candidate]
                accepted += 1
            else:
                rejected += 1
        grown_rows += len(expanded) > len(reciprocal[i])
        columns = sorted(expanded)
        weight = np.exp(-dist[i, columns].astype(np.float64))
        v[i, columns] = weight / weight.sum()
    if k2 != 1:
        selection = np.zeros((n, n))
        for i in range(n):
            selection[i, order[i][:k2]] = 1.0 / k2
        v = selection @ v
    gallery_v = v[num_query:]
    jaccard = np.empty((num_query, num_gallery))
    for i in range(num_query):
        sum_min = np.minimum(v[i], gallery_v).sum(axis=1)
        sum_max = np.maximum(v[i], gallery_v).sum(axis=1)
        jaccard[i] = 1.0 - np.divide(sum_min, sum_max, out=np.zeros_like(sum_min), where=sum_max > 0)
    if stats is not None:
        stats.update(accepted=accepted, rejected=rejected, grown_rows=grown_rows)
    original = dist[:num_query, num_query:].astype(np.float64)
    return jaccard * (1 - lambda_value) + original * lambda_value


def assert_close(actual: np.ndarray, expected: np.ndarray, atol: float = 2e-5) -> None:
    """assert_allclose that names the first mismatching (query, gallery) entries."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    bad = np.argwhere(~(np.abs(actual - expected) <= atol))
    if bad.size:
        rows = [f"  {tuple(ij)}: got {actual[tuple(ij)]:.8f}, expected {expected[tuple(ij)]:.8f}" for ij in bad[:5]]
        pytest.fail(f"{len(bad)} of {actual.size} entries differ by more than {atol}:\n" + "\n".join(rows))


# ----------------------------------------------------------------------------------------------------
# hand-computed cases
#
# One query and three gallery items on a line: positions 0 | 1, 3, 7 (items 0, 1, 2, 3).
# Squared distances (symmetric, so "column max then transpose" = divide each row by its max):
#   item 0: [0, 1, 9, 49] / 49      item 1: [1, 0, 4, 36] / 36
#   item 2: [9, 4, 0, 16] / 16      item 3: [49, 36, 16, 0] / 49
# Row orders: 0: 0,1,2,3   1: 1,0,2,3   2: 2,1,0,3   3: 3,2,1,0.

LINE_POINTS = np.array([[0.0], [1.0], [3.0], [7.0]])


def test_hand_case_k1_1_without_query_expansion():
    # k1 = 1: forward = the 2 first of a row.  R(0) = {0, 1} (0 and 1 are mutual nearest), R(1) = {0, 1},
    # R(2) = {2} (1's first two are 1, 0), R(3) = {3}.  Expansion uses round(0.5) + 1 = 1 neighbour, i.e.
    # R(c, 0) = {c}: nothing is added.  k2 = 1: no query expansion.
    #   V[0] = [1, e^(-1/49), 0, 0] / (1 + e^(-1/49))     V[1] = [e^(-1/36), 1, 0, 0] / (1 + e^(-1/36))
    #   V[2] = [0, 0, 1, 0]                                V[3] = [0, 0, 0, 1]
    # s(0, 1) = min(V00, V10) + min(V01, V11) = V10 + V01;  s(0, 2) = s(0, 3) = 0 -> Jaccard 1.
    # final = 0.7 * jaccard + 0.3 * normalised squared distance.
    v0 = np.array([1.0, math.exp(-1 / 49)]) / (1 + math.exp(-1 / 49))
    v1 = np.array([math.exp(-1 / 36), 1.0]) / (1 + math.exp(-1 / 36))
    shared = min(v0[0], v1[0]) + min(v0[1], v1[1])
    jaccard_to_item_1 = 1 - shared / (2 - shared)
    expected = np.array([[0.7 * jaccard_to_item_1 + 0.3 / 49, 0.7 + 0.3 * 9 / 49, 0.7 + 0.3 * 1.0]])

    q_g, q_q, g_g = split_blocks(euclidean(LINE_POINTS), 1)
    result = re_ranking(q_g, q_q, g_g, k1=1, k2=1, lambda_value=0.3)
    assert 0.02 < jaccard_to_item_1 < 0.03  # the weights are close to 1/2 each
    assert_close(result, expected, atol=1e-6)


def test_hand_case_k1_2_with_query_expansion():
    # k1 = 2: forward = the 3 first of a row. Items 0, 1, 2 each have the other two among their first
    # three, so R(0) = R(1) = R(2) = {0, 1, 2}; item 3 is in nobody's first three: R(3) = {3}.
    # Expansion uses round(1) + 1 = 2 neighbours: R(0, 1) = R(1, 1) = {0, 1}, R(2, 1) = {2}, R(3, 1) = {3},
    # all already inside, so nothing is added.  V[i] = exp(-d[i, {0,1,2}]) normalised for i < 3, V[3] = e3.
    # k2 = 2 averages each row with the row of its nearest other item (orders 0: 0,1  1: 1,0  2: 2,1
    # 3: 3,2):  V'[0] = V'[1] = (V0 + V1) / 2,  V'[2] = (V2 + V1) / 2,  V'[3] = (V3 + V2) / 2.
    # Jaccard 1 - s / (2 - s) with, using min((a + c) / 2, (b + c) / 2) = (c + min(a, b)) / 2:
    #   s(0, 1) = 1                                    -> 0
    #   s(0, 2) = (1 + sum min(V0, V2)) / 2
    #   s(0, 3) = sum over j < 3 of min((V0j + V1j) / 2, V2j / 2) = sum V2j / 2 = 1/2  -> 2/3
    #             (V0j + V1j > V2j in every column: about .69 > .24, .70 > .33, .61 > .43)
    # lambda = 0 leaves the Jaccard distance alone.
    def normalised_weights(row):
        weights = np.exp(-np.array(row))
        return weights / weights.sum()

    v0 = normalised_weights([0, 1 / 49, 9 / 49])
    v1 = normalised_weights([1 / 36, 0, 4 / 36])
    v2 = normalised_weights([9 / 16, 4 / 16, 0])
    shared_2 = (1 + np.minimum(v0, v2).sum()) / 2
    shared_3 = np.minimum((v0 + v1) / 2, v2 / 2).sum()
    expected = [[0.0, 1 - shared_2 / (2 - shared_2), 1 - shared_3 / (2 - shared_3)]]
    assert 0.1 < expected[0][1] < expected[0][2] == pytest.approx(2 / 3)

    q_g, q_q, g_g = split_blocks(euclidean(LINE_POINTS), 1)
    result = re_ranking(q_g, q_q, g_g, k1=2, k2=2, lambda_value=0.0)
    assert_close(result, np.array(expected), atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# values produced by the published code (torchreid/utils/rerank.py at KaiyangZhou/deep-person-reid
# 08bb2cc), on three queries and seven gallery items in the plane, float64 distances, no ties.

PLANE_POINTS = np.array(
    [[0.3, -0.3], [1.3, 0.2], [-1.1, 0.7], [2.6, 1.9], [-1.4, -2.5],
     [-1.2, 0.1], [-4.7, -0.4], [-2.5, -1.5], [-1.1, -0.6], [0.8, 2.1]]
)
PUBLISHED_OUTPUTS = {
    # (k1, k2, lambda): (3, 7) output. k1 = 6 expands through 4-neighbour sets (the 2/3 rule accepts
    # some candidates and rejects others); k1 = 5 pins round-half-to-even: round(2.5) = 2, and
    # round-half-up (3) changes these values by up to 0.07.
    (6, 3, 0.3): [
        [0.48497525, 0.36449549, 0.19710138, 0.72614551, 0.38308805, 0.19278310, 0.43555501],
        [0.23897153, 0.54659307, 0.39054272, 0.80120999, 0.56928289, 0.39169782, 0.23303095],
        [0.75862992, 0.37973315, 0.00733646, 0.64897215, 0.30973977, 0.03350963, 0.56907278],
    ],
    (5, 2, 0.1): [
        [0.55129939, 0.84126055, 0.34757471, 0.91035295, 0.84745806, 0.48977664, 0.53482598],
        [0.52339184, 0.85045195, 0.35515529, 0.91035295, 0.85801518, 0.49918169, 0.52141166],
        [0.78217894, 0.77692115, 0.00244547, 0.85237324, 0.75358999, 0.25675848, 0.71899319],
    ],
}


@pytest.mark.parametrize("params", sorted(PUBLISHED_OUTPUTS), ids=str)
def test_matches_published_code_values(params):
    k1, k2, lambda_value = params
    q_g, q_q, g_g = split_blocks(euclidean(PLANE_POINTS), 3)
    result = re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value)
    assert_close(result, np.array(PUBLISHED_OUTPUTS[params]), atol=2e-7)


def test_plane_case_exercises_the_expansion_rule():
    stats: dict = {}
    q_g, q_q, g_g = split_blocks(euclidean(PLANE_POINTS), 3)
    dense_re_ranking(q_g, q_q, g_g, 6, 3, 0.3, stats)
    assert stats["accepted"] > 0 and stats["rejected"] > 0 and stats["grown_rows"] > 0


# ----------------------------------------------------------------------------------------------------
# agreement with the dense formulation


def agreement_cases():
    sizes = [(1, 2), (2, 4), (3, 9), (12, 40), (25, 100), (40, 220), (50, 300)]
    cases = []
    index = 0
    for k1 in (1, 2, 5, 20, 21):
        for k2 in (1, 6):
            if k2 > k1:
                continue
            for lambda_value in (0.0, 0.3, 1.0):
                fitting = [s for s in sizes if sum(s) > k1]
                num_query, num_gallery = fitting[index % len(fitting)]
                cases.append((num_query, num_gallery, k1, k2, lambda_value, index))
                index += 1
    return cases


@pytest.mark.parametrize(
    "num_query,num_gallery,k1,k2,lambda_value,seed",
    agreement_cases(),
    ids=lambda v: str(v),
)
def test_agrees_with_dense_formulation(num_query, num_gallery, k1, k2, lambda_value, seed):
    q_g, q_q, g_g = clustered_distances(seed, num_query, num_gallery)
    expected = dense_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value)
    result = re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value)
    assert_close(result, expected)


@pytest.mark.parametrize("k1", [20, 21])
def test_clustered_data_exercises_the_expansion_rule(k1):
    stats: dict = {}
    dense_re_ranking(*clustered_distances(7, 40, 220), k1, 6, 0.3, stats)
    assert stats["accepted"] > 0 and stats["rejected"] > 0 and stats["grown_rows"] > 0


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_agrees_with_dense_formulation_on_tied_integer_distances(data):
    # Small integer distances tie a lot; both formulations order ties by item index. Off-diagonal
    # distances are >= 1 so every item is its own strict nearest neighbour. Asymmetric q_q and g_g
    # blocks check that row i is ranked by column i of the joint matrix, as published.
    n = data.draw(st.integers(2, 12), label="n")
    num_query = data.draw(st.integers(1, n - 1), label="num_query")
    off_diagonal = data.draw(st.lists(st.integers(1, 4), min_size=n * (n - 1), max_size=n * (n - 1)))
    joint = np.zeros((n, n), dtype=np.float32)
    joint[~np.eye(n, dtype=bool)] = off_diagonal
    if data.draw(st.booleans(), label="symmetric"):
        joint = np.triu(joint) + np.triu(joint).T
    k1 = data.draw(st.integers(1, n - 1), label="k1")
    k2 = data.draw(st.integers(1, k1), label="k2")
    lambda_value = data.draw(st.sampled_from([0.0, 0.3, 1.0]), label="lambda_value")
    q_g, q_q, g_g = split_blocks(joint, num_query)
    expected = dense_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value)
    assert_close(re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value), expected)


def test_ties_are_broken_by_item_index():
    # Query 0 at distance 1 from gallery items 1 and 2 (tied), and 1 and 2 far apart. With k1 = 1 the
    # query's two first are itself and item 1 (the lower index), so item 1 becomes its reciprocal
    # neighbour and item 2 does not: item 1 ends up strictly closer.
    joint = np.array([[0, 1, 1], [1, 0, 3], [1, 3, 0]], dtype=np.float32)
    result = re_ranking(*split_blocks(joint, 1), k1=1, k2=1, lambda_value=0.0)
    assert result[0, 0] < result[0, 1] == 1.0
    swapped = joint[[0, 2, 1]][:, [0, 2, 1]]  # the same geometry with the two gallery items swapped
    result_swapped = re_ranking(*split_blocks(swapped, 1), k1=1, k2=1, lambda_value=0.0)
    assert_close(result_swapped, result, atol=0)


# ----------------------------------------------------------------------------------------------------
# properties


def test_lambda_one_gives_the_column_normalised_squared_distances():
    # An asymmetric q_q pins the published normalisation: row i of the output is divided by the
    # maximum of column i of the squared joint matrix, which here comes from q_q[:, i].
    rng = np.random.default_rng(0)
    q_g = rng.uniform(1, 2, size=(3, 5)).astype(np.float32)
    g_g = euclidean(rng.normal(size=(5, 4))).astype(np.float32)
    q_q = np.array([[0, 1, 1], [5, 0, 1], [1, 4, 0]], dtype=np.float32)
    result = re_ranking(q_g, q_q, g_g, k1=3, k2=2, lambda_value=1.0)

    column_max = np.maximum((q_q * q_q).max(axis=0), (q_g * q_g).max(axis=1))
    expected = (q_g * q_g) / column_max[:, None]
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=0)
    row_normalised = (q_g * q_g) / np.maximum((q_q * q_q).max(axis=1), (q_g * q_g).max(axis=1))[:, None]
    assert not np.allclose(result, row_normalised, rtol=1e-3)


@pytest.mark.parametrize("lambda_value", [0.0, 0.3, 1.0])
def test_values_lie_in_unit_interval_and_lambda_blends_linearly(lambda_value):
    q_g, q_q, g_g = clustered_distances(11, 10, 50)
    result = re_ranking(q_g, q_q, g_g, k1=8, k2=3, lambda_value=lambda_value)
    assert result.min() >= -1e-6 and result.max() <= 1 + 1e-6
    jaccard = re_ranking(q_g, q_q, g_g, k1=8, k2=3, lambda_value=0.0)
    original = re_ranking(q_g, q_q, g_g, k1=8, k2=3, lambda_value=1.0)
    assert_close(result, (1 - lambda_value) * jaccard + lambda_value * original, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int64])
def test_shape_and_dtype(dtype):
    q_g, q_q, g_g = (np.round(4 * a).astype(dtype) for a in clustered_distances(3, 4, 9))
    result = re_ranking(q_g, q_q, g_g, k1=4, k2=2)
    assert result.shape == (4, 9) and result.dtype == np.float32
    assert result.flags.c_contiguous and np.isfinite(result).all()


@pytest.mark.parametrize("num_query,num_gallery", [(0, 5), (5, 0)])
def test_empty_query_or_gallery(num_query, num_gallery):
    joint = np.ones((5, 5), dtype=np.float32) - np.eye(5, dtype=np.float32)
    q_g, q_q, g_g = split_blocks(joint, num_query)
    result = re_ranking(q_g, q_q, g_g, k1=2, k2=1)
    assert result.shape == (num_query, num_gallery) and result.dtype == np.float32


def test_deterministic_layout_independent_and_inputs_untouched():
    q_g, q_q, g_g = clustered_distances(5, 20, 60)
    copies = [a.copy() for a in (q_g, q_q, g_g)]
    first = re_ranking(q_g, q_q, g_g, k1=10, k2=4)
    assert np.array_equal(re_ranking(q_g, q_q, g_g, k1=10, k2=4), first)
    fortran = [np.asfortranarray(a) for a in (q_g, q_q, g_g)]
    assert np.array_equal(re_ranking(*fortran, k1=10, k2=4), first)
    padded = np.zeros((20, 120), dtype=np.float32)
    padded[:, ::2] = q_g  # a strided view
    assert np.array_equal(re_ranking(padded[:, ::2], q_q, g_g, k1=10, k2=4), first)
    assert np.array_equal(re_ranking(q_g.tolist(), q_q.tolist(), g_g.tolist(), k1=10, k2=4), first)
    for before, after in zip(copies, (q_g, q_q, g_g)):
        assert np.array_equal(before, after)


def test_query_equals_gallery():
    # Every query also sits in the gallery (exact zero distance: a tie with itself, ordered by index).
    rng = np.random.default_rng(2)
    features = clustered_features(rng, 30).astype(np.float64)
    distances = euclidean(features).astype(np.float32)
    q_g = q_q = g_g = distances
    result = re_ranking(q_g, q_q, g_g, k1=6, k2=3, lambda_value=0.3)
    assert np.array_equal(result.argmin(axis=1), np.arange(30))
    assert_close(result, dense_re_ranking(q_g, q_q, g_g, 6, 3, 0.3))


@pytest.mark.parametrize("k2", [1, 3])
def test_all_zero_distances_give_finite_values(k2):
    # Every item at distance 0 from every item: the published code divides 0 by 0 here; the reference
    # keeps zeros. All rows then rank 0, 1, ..., N-1 (index order), so R(i) = {0..k1} for i <= k1 and
    # is empty for i > k1. With k2 > 1 every row of V becomes the uniform row over {0..k1}: Jaccard 0
    # everywhere. With k2 = 1 the Jaccard distance is 0 between items <= k1 and 1 otherwise.
    num_query, num_gallery, k1 = 3, 6, 4
    joint = np.zeros((9, 9), dtype=np.float32)
    with np.errstate(all="raise"):
        result = re_ranking(*split_blocks(joint, num_query), k1=k1, k2=k2, lambda_value=0.3)
    if k2 > 1:
        expected = np.zeros((num_query, num_gallery))
    else:
        gallery_items = np.arange(num_query, num_query + num_gallery)
        expected = np.where(gallery_items[None, :] <= k1, 0.0, 0.7).repeat(num_query, axis=0)
    assert_close(result, expected, atol=1e-6)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_identical_and_duplicate_features_give_finite_values(metric):
    identical = np.ones((8, 5), dtype=np.float32)
    result = re_ranking_features(identical[:3], identical[3:], k1=4, k2=2, metric=metric)
    assert result.shape == (3, 5) and np.isfinite(result).all()

    rng = np.random.default_rng(4)
    base = clustered_features(rng, 6)
    duplicated = np.concatenate([base, base, base[:2]])  # every feature two or three times
    result = re_ranking_features(duplicated[:5], duplicated[5:], k1=5, k2=3, metric=metric)
    # 1 - s / (2 - s) dips just below 0 when the float32 overlap s of identical rows rounds above 1.
    assert np.isfinite(result).all() and result.min() >= -1e-6 and result.max() <= 1 + 1e-6


# ----------------------------------------------------------------------------------------------------
# re_ranking_features


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_features_entry_point_matches_distance_entry_point(metric):
    rng = np.random.default_rng(9)
    features = clustered_features(rng, 45) * 3.0  # norms far from 1, so the metrics disagree
    query, gallery = features[:10], features[10:]
    distances = pairwise_distance(torch.from_numpy(features), metric=metric).numpy()
    expected = re_ranking(*split_blocks(distances, 10), k1=7, k2=3, lambda_value=0.3)
    result = re_ranking_features(query, gallery, k1=7, k2=3, lambda_value=0.3, metric=metric)
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-6)
    from_tensors = re_ranking_features(torch.from_numpy(query), torch.from_numpy(gallery), 7, 3, 0.3, metric)
    np.testing.assert_array_equal(from_tensors, result)
    other = "cosine" if metric == "euclidean" else "euclidean"
    assert not np.allclose(re_ranking_features(query, gallery, 7, 3, 0.3, other), result, atol=1e-3)


# ----------------------------------------------------------------------------------------------------
# argument errors


def valid_distances():
    return clustered_distances(1, 3, 5)  # Q = 3, G = 5, N = 8


@pytest.mark.parametrize(
    "replace,match",
    [
        ({"q_g_dist": np.zeros(5)}, "q_g_dist: expected a 2-D"),
        ({"q_q_dist": np.zeros((3, 3, 1))}, "q_q_dist: expected a 2-D"),
        ({"g_g_dist": np.zeros((2, 5, 5))}, "g_g_dist: expected a 2-D"),
        ({"q_q_dist": np.zeros((3, 4))}, r"q_q_dist: expected shape \(Q, Q\) = \(3, 3\)"),
        ({"g_g_dist": np.zeros((4, 4))}, r"g_g_dist: expected shape \(G, G\) = \(5, 5\)"),
        ({"q_g_dist": np.zeros((3, 4))}, r"g_g_dist: expected shape \(G, G\) = \(4, 4\)"),
        ({"q_g_dist": np.full((3, 5), "a")}, "q_g_dist: expected real numbers"),
        ({"g_g_dist": np.ones((5, 5), dtype=np.complex64)}, "g_g_dist: expected real numbers"),
    ],
)
def test_bad_distance_shapes_and_dtypes(replace, match):
    arguments = dict(zip(("q_g_dist", "q_q_dist", "g_g_dist"), valid_distances()))
    arguments.update(replace)
    with pytest.raises(ValueError, match=match):
        re_ranking(**arguments, k1=2, k2=1)


@pytest.mark.parametrize("name", ["q_g_dist", "q_q_dist", "g_g_dist"])
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_distances(name, bad_value):
    arguments = {key: value.copy() for key, value in zip(("q_g_dist", "q_q_dist", "g_g_dist"), valid_distances())}
    arguments[name][0, 1] = bad_value
    with pytest.raises(ValueError, match=f"{name}: expected finite values"):
        re_ranking(**arguments, k1=2, k2=1)


@pytest.mark.parametrize(
    "k1,k2,lambda_value,match",
    [
        (2.0, 1, 0.3, "k1: expected an integer"),
        (True, 1, 0.3, "k1: expected an integer"),
        ("20", 1, 0.3, "k1: expected an integer"),
        (0, 1, 0.3, r"k1: expected 1 <= k1 < Q \+ G = 8"),
        (8, 1, 0.3, r"k1: expected 1 <= k1 < Q \+ G = 8"),
        (4, 1.5, 0.3, "k2: expected an integer"),
        (4, None, 0.3, "k2: expected an integer"),
        (4, 0, 0.3, r"k2: expected 1 <= k2 <= k1 = 4"),
        (4, 5, 0.3, r"k2: expected 1 <= k2 <= k1 = 4"),
        (4, 2, -0.1, r"lambda_value: expected a real number in \[0, 1\]"),
        (4, 2, 1.5, r"lambda_value: expected a real number in \[0, 1\]"),
        (4, 2, float("nan"), r"lambda_value: expected a real number in \[0, 1\]"),
        (4, 2, "0.3", "lambda_value: expected a real number"),
        (4, 2, None, "lambda_value: expected a real number"),
    ],
)
def test_bad_parameters(k1, k2, lambda_value, match):
    with pytest.raises(ValueError, match=match):
        re_ranking(*valid_distances(), k1=k1, k2=k2, lambda_value=lambda_value)


def test_numpy_integer_parameters_are_accepted():
    expected = re_ranking(*valid_distances(), k1=4, k2=2, lambda_value=0.3)
    result = re_ranking(*valid_distances(), k1=np.int64(4), k2=np.int32(2), lambda_value=np.float64(0.3))
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize(
    "query,gallery,metric,match",
    [
        (np.ones((3, 4)), np.ones((5, 4)), "manhattan", "metric: expected one of"),
        (np.ones((3, 4)), np.ones((5, 3)), "euclidean", "gallery_features: expected the same feature dimension"),
        (np.ones(4), np.ones((5, 4)), "euclidean", "query_features: expected a 2-D"),
        (np.ones((3, 4)), np.ones((5, 4, 1)), "euclidean", "gallery_features: expected a 2-D"),
        (np.full((3, 4), np.nan), np.ones((5, 4)), "euclidean", "query_features: expected finite values, got NaN or Inf"),
        (np.ones((3, 4)), np.full((5, 4), np.inf), "cosine", "gallery_features: expected finite values, got NaN or Inf"),
        (np.full((3, 4), "x"), np.ones((5, 4)), "euclidean", "query_features: expected real numbers"),
    ],
)
def test_bad_feature_arguments(query, gallery, metric, match):
    with pytest.raises(ValueError, match=match):
        re_ranking_features(query, gallery, k1=2, k2=1, metric=metric)


def test_features_entry_point_checks_parameters_too():
    with pytest.raises(ValueError, match="k1: expected"):
        re_ranking_features(np.ones((2, 4)), np.ones((3, 4)), k1=5, k2=1)
