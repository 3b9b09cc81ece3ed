"""Tests for the reference re-ID evaluator (Market-1501 and CUHK03 protocols)."""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from reidfast.reference.evaluation import EvaluationResult, evaluate_cuhk03, evaluate_market1501

# ---------------------------------------------------------------------------------------------------
# Shared hand-made case: 3 queries, 6 gallery items.
#
#   gallery   g0     g1     g2     g3          g4     g5
#   pid       1      2      1      0 (distr.)  1      3
#   camid     0      1      1      1           2      0
#
# q0: pid 1, cam 0, distances 0.1 .. 0.6 (ranking g0 g1 g2 g3 g4 g5).
#     g0 is pid 1 in cam 0 -> removed. Kept ranking g1 g2 g3 g4 g5 -> matches 0 1 0 1 0.
#     CMC = [0, 1, 1, 1, 1], AP = (1/2 + 2/4) / 2 = 0.5, INP = 2 / 4 = 0.5.
# q1: pid 2, cam 0, distances [0.5, 0.1, 0.1, 0.1, 0.9, 0.2]: g1, g2, g3 tie at 0.1 and are ordered by
#     gallery index, ranking g1 g2 g3 g5 g0 g4. g1 (pid 2, cam 1) is kept and ranks first.
#     CMC = [1, 1, 1, 1, 1, 1], AP = 1, INP = 1. (Reverse tie order would put g1 third.)
# q2: pid 3, cam 0. Its only gallery image g5 is in cam 0 -> removed -> no match -> skipped.
#
# Mean over the 2 valid queries: CMC = [0.5, 1, 1, 1, 1], mAP = 0.75, mINP = 0.75.
# ---------------------------------------------------------------------------------------------------
HAND_DISTMAT = np.array(
    [
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        [0.5, 0.1, 0.1, 0.1, 0.9, 0.2],
        [0.3, 0.2, 0.1, 0.4, 0.5, 0.6],
    ]
)
HAND_Q_PIDS = np.array([1, 2, 3])
HAND_Q_CAMIDS = np.array([0, 0, 0])
HAND_G_PIDS = np.array([1, 2, 1, 0, 1, 3])
HAND_G_CAMIDS = np.array([0, 1, 1, 1, 2, 0])
HAND_ARGS = (HAND_DISTMAT, HAND_Q_PIDS, HAND_G_PIDS, HAND_Q_CAMIDS, HAND_G_CAMIDS)

EVALUATORS = [evaluate_market1501, evaluate_cuhk03]


# ---------------------------------------------------------------------------------------------------
# Independent formulations used as oracles.
# ---------------------------------------------------------------------------------------------------
def brute_force_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Rank of every correct match by counting, no sorting.

    rank(j) = 1 + #{valid gallery v: d[v] < d[j] or (d[v] == d[j] and v < j)}.
    AP = mean_k k / rank_(k) over the sorted match ranks; CMC_k = [min rank <= k]; INP = n / max rank.
    """
    num_query, num_gallery = distmat.shape
    max_rank = min(max_rank, num_gallery)
    cmc_rows, average_precisions, inverse_negative_penalties = [], [], []
    for q in range(num_query):
        valid = [v for v in range(num_gallery) if not (g_pids[v] == q_pids[q] and g_camids[v] == q_camids[q])]
        match_ranks = []
        for j in valid:
            if g_pids[j] != q_pids[q]:
                continue
            closer = sum(
                1 for v in valid if distmat[q, v] < distmat[q, j] or (distmat[q, v] == distmat[q, j] and v < j)
            )
            match_ranks.append(closer + 1)
        if not match_ranks:
            continue
        match_ranks.sort()
        cmc_rows.append([1.0 if match_ranks[0] <= k else 0.0 for k in range(1, max_rank + 1)])
        average_precisions.append(np.mean([(k + 1) / rank for k, rank in enumerate(match_ranks)]))
        inverse_negative_penalties.append(len(match_ranks) / match_ranks[-1])
    return (
        np.mean(cmc_rows, axis=0),
        float(np.mean(average_precisions)),
        float(np.mean(inverse_negative_penalties)),
        len(cmc_rows),
    )


def torchreid_style_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """torchreid's python eval_market1501 computation, step for step (Q x G match matrix, float32 CMC
    sum, AP from the full-length precision vector), plus fast-reid's INP. Works only when every kept
    row has at least max_rank items (torchreid builds a ragged array otherwise)."""
    num_query, num_gallery = distmat.shape
    max_rank = min(max_rank, num_gallery)
    indices = np.argsort(distmat, axis=1)
    match_matrix = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
    cmc_rows, average_precisions, inverse_negative_penalties = [], [], []
    for q in range(num_query):
        order = indices[q]
        keep = ~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))
        row = match_matrix[q][keep]
        if not np.any(row):
            continue
        hits = row.cumsum()
        last = np.max(np.where(row == 1))
        inverse_negative_penalties.append(hits[last] / (last + 1.0))
        clipped = hits.copy()
        clipped[clipped > 1] = 1
        cmc_rows.append(clipped[:max_rank])
        precisions = np.asarray([h / (i + 1.0) for i, h in enumerate(hits)]) * row
        average_precisions.append(precisions.sum() / row.sum())
    cmc = np.asarray(cmc_rows).astype(np.float32).sum(0) / float(len(cmc_rows))
    return cmc, np.mean(average_precisions), np.mean(inverse_negative_penalties)


def random_problem(rng, num_query, num_gallery, num_ids, num_cams, integer_distances=False):
    """Random labels and distances; integer distances produce many ties."""
    if integer_distances:
        distmat = rng.integers(0, 4, size=(num_query, num_gallery)).astype(np.float64)
    else:
        distmat = rng.random((num_query, num_gallery))
    q_pids = rng.integers(0, num_ids, size=num_query)
    g_pids = rng.integers(0, num_ids, size=num_gallery)
    q_camids = rng.integers(0, num_cams, size=num_query)
    g_camids = rng.integers(0, num_cams, size=num_gallery)
    return distmat, q_pids, g_pids, q_camids, g_camids


# ---------------------------------------------------------------------------------------------------
# Market-1501: hand-computed cases.
# ---------------------------------------------------------------------------------------------------
def test_market_hand_case_with_removal_distractor_tie_and_skipped_query():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = evaluate_market1501(*HAND_ARGS, max_rank=5)
    assert isinstance(result, EvaluationResult)
    assert result.cmc.dtype == np.float32
    np.testing.assert_array_equal(result.cmc, np.array([0.5, 1, 1, 1, 1], dtype=np.float32))
    assert result.mAP == pytest.approx(0.75, abs=1e-15)
    assert result.mINP == pytest.approx(0.75, abs=1e-15)
    assert result.num_valid_queries == 2
    assert result.num_skipped_queries == 1


def test_market_single_queries_of_hand_case():
    # q0 alone: CMC [0, 1, 1, 1, 1], AP 0.5, INP 0.5.
    result = evaluate_market1501(HAND_DISTMAT[:1], HAND_Q_PIDS[:1], HAND_G_PIDS, HAND_Q_CAMIDS[:1], HAND_G_CAMIDS, 5)
    np.testing.assert_array_equal(result.cmc, [0, 1, 1, 1, 1])
    assert (result.mAP, result.mINP) == (0.5, 0.5)
    # q1 alone: the tie at 0.1 between g1 (match), g2, g3 is broken by gallery index -> rank 1.
    result = evaluate_market1501(
        HAND_DISTMAT[1:2], HAND_Q_PIDS[1:2], HAND_G_PIDS, HAND_Q_CAMIDS[1:2], HAND_G_CAMIDS, 5
    )
    np.testing.assert_array_equal(result.cmc, [1, 1, 1, 1, 1])
    assert (result.mAP, result.mINP) == (1.0, 1.0)


def test_market_tie_broken_by_gallery_index_not_by_reverse_order():
    # Query pid 5; gallery g0 pid 9, g1 pid 5, g2 pid 8, all at distance 1.0 in other cameras.
    # Index order g0 g1 g2 -> match at rank 2: CMC [0, 1, 1], AP = 1/2, INP = 1/2.
    distmat = np.ones((1, 3))
    result = evaluate_market1501(distmat, [5], [9, 5, 8], [0], [1, 1, 1], max_rank=3)
    np.testing.assert_array_equal(result.cmc, [0, 1, 1])
    assert result.mAP == 0.5 and result.mINP == 0.5


def test_market_three_matches_with_permuted_distances():
    # Query pid 7 cam 0. Gallery (index: pid, cam, distance):
    #   g0: 0, 1, 0.6    g1: 7, 2, 0.1    g2: 8, 1, 0.3
    #   g3: 7, 1, 0.5    g4: 9, 3, 0.2    g5: 7, 3, 0.9   g6: 7, 0, 0.05 (same pid+cam -> removed)
    # Kept ranking by distance: g1(7) g4(9) g2(8) g3(7) g0(0) g5(7) -> matches at ranks 1, 4, 6.
    # CMC = [1]*6, AP = (1/1 + 2/4 + 3/6) / 3 = 2/3, INP = 3/6 = 0.5.
    distmat = np.array([[0.6, 0.1, 0.3, 0.5, 0.2, 0.9, 0.05]])
    result = evaluate_market1501(distmat, [7], [0, 7, 8, 7, 9, 7, 7], [0], [1, 2, 1, 1, 3, 3, 0], max_rank=6)
    np.testing.assert_array_equal(result.cmc, np.ones(6))
    assert result.mAP == pytest.approx(2 / 3, abs=1e-15)
    assert result.mINP == pytest.approx(0.5, abs=1e-15)
    # Without the removal rule g6 would rank first; check it really is gone: top-1 only from g1.
    result = evaluate_market1501(distmat, [7], [0, 7, 8, 7, 9, 7, 7], [0], [1, 2, 1, 1, 3, 3, 0], max_rank=1)
    np.testing.assert_array_equal(result.cmc, [1])


def test_market_same_pid_other_camera_is_kept_and_other_pid_same_camera_is_kept():
    # Query pid 1 cam 0. g0: pid 2 cam 0 (other pid, same cam -> kept, non-match), g1: pid 1 cam 1 (match).
    # Ranking g0 g1 -> CMC [0, 1], AP 0.5, INP 0.5.
    result = evaluate_market1501(np.array([[0.1, 0.2]]), [1], [2, 1], [0], [0, 1], max_rank=2)
    np.testing.assert_array_equal(result.cmc, [0, 1])
    assert result.mAP == 0.5 and result.mINP == 0.5


def test_market_small_gallery_warns_cuts_cmc_and_pads_short_kept_rows():
    # max_rank 50 > 6 gallery items -> warning, CMC length 6. q0's kept row has 5 items; its CMC is
    # padded with 1: [0, 1, 1, 1, 1, 1]; q1: all ones. Mean = [0.5, 1, 1, 1, 1, 1].
    with pytest.warns(UserWarning, match="number of gallery samples \\(6\\) is smaller than max_rank \\(50\\)"):
        result = evaluate_market1501(*HAND_ARGS)
    assert result.cmc.shape == (6,)
    np.testing.assert_array_equal(result.cmc, [0.5, 1, 1, 1, 1, 1])
    assert result.mAP == 0.75


def test_market_no_warning_when_gallery_is_large_enough():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = evaluate_market1501(*HAND_ARGS, max_rank=6)
    assert result.cmc.shape == (6,)


def test_market_inf_distances_rank_last():
    # g0 (match) at +inf, g1 (non-match) finite: ranking g1 g0 -> CMC [0, 1], AP 0.5.
    result = evaluate_market1501(np.array([[np.inf, 1.0]]), [1], [1, 2], [0], [1, 1], max_rank=2)
    np.testing.assert_array_equal(result.cmc, [0, 1])
    assert result.mAP == 0.5


def test_result_is_frozen_and_cmc_read_only():
    result = evaluate_market1501(*HAND_ARGS, max_rank=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.mAP = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        result.cmc[0] = 1.0
    assert isinstance(result.mAP, float) and isinstance(result.mINP, float)
    assert isinstance(result.num_valid_queries, int) and isinstance(result.num_skipped_queries, int)


def test_accepts_lists_and_integral_float_labels():
    expected = evaluate_market1501(*HAND_ARGS, max_rank=5)
    result = evaluate_market1501(
        HAND_DISTMAT.tolist(),
        HAND_Q_PIDS.astype(np.float32),
        HAND_G_PIDS.tolist(),
        HAND_Q_CAMIDS.astype(np.float64),
        HAND_G_CAMIDS.astype(np.uint8),
        max_rank=np.int64(5),
    )
    np.testing.assert_array_equal(result.cmc, expected.cmc)
    assert result.mAP == expected.mAP and result.mINP == expected.mINP


def test_float32_and_integer_distmats_give_same_ranking():
    expected = evaluate_market1501(*HAND_ARGS, max_rank=5)
    as_float32 = evaluate_market1501(HAND_DISTMAT.astype(np.float32), *HAND_ARGS[1:], max_rank=5)
    as_int = evaluate_market1501((HAND_DISTMAT * 100).round().astype(np.int32), *HAND_ARGS[1:], max_rank=5)
    for result in (as_float32, as_int):
        np.testing.assert_array_equal(result.cmc, expected.cmc)
        assert result.mAP == expected.mAP


# ---------------------------------------------------------------------------------------------------
# Market-1501: random data against the independent formulations.
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("integer_distances", [False, True])
@pytest.mark.parametrize("shape_and_rank", [((7, 12, 4, 2), 50), ((15, 40, 6, 3), 10), ((20, 30, 10, 4), 30)])
def test_market_matches_brute_force(seed, integer_distances, shape_and_rank):
    (num_query, num_gallery, num_ids, num_cams), max_rank = shape_and_rank
    rng = np.random.default_rng(seed)
    args = random_problem(rng, num_query, num_gallery, num_ids, num_cams, integer_distances)
    expected_cmc, expected_map, expected_minp, expected_valid = brute_force_market1501(*args, max_rank)
    assert expected_valid > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate_market1501(*args, max_rank=max_rank)
    assert result.cmc.shape == (min(max_rank, num_gallery),)
    np.testing.assert_allclose(result.cmc, expected_cmc, rtol=1e-6, atol=0)
    assert result.mAP == pytest.approx(expected_map, rel=1e-12)
    assert result.mINP == pytest.approx(expected_minp, rel=1e-12)
    assert result.num_valid_queries == expected_valid
    assert result.num_skipped_queries == num_query - expected_valid


@pytest.mark.parametrize("seed", range(10))
def test_market_bit_identical_to_torchreid_style_computation(seed):
    # Continuous distances (no ties, so torchreid's unstable argsort agrees) and max_rank small enough
    # that no kept row is shorter than max_rank.
    rng = np.random.default_rng(100 + seed)
    args = random_problem(rng, num_query=60, num_gallery=80, num_ids=12, num_cams=3)
    expected_cmc, expected_map, expected_minp = torchreid_style_market1501(*args, max_rank=20)
    result = evaluate_market1501(*args, max_rank=20)
    assert result.num_valid_queries + result.num_skipped_queries == 60
    assert result.num_skipped_queries < 60
    np.testing.assert_array_equal(result.cmc, expected_cmc)
    assert result.mAP == expected_map
    assert result.mINP == expected_minp


def test_market_skips_every_query_without_match_and_counts_them():
    rng = np.random.default_rng(3)
    distmat, _, g_pids, q_camids, g_camids = random_problem(rng, 10, 20, 5, 2)
    q_pids = np.array([0, 1, 100, 101, 2, 102, 3, 4, 103, 104])  # pids >= 100 are absent from the gallery
    result = evaluate_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=5)
    present = evaluate_market1501(
        distmat[[0, 1, 4, 6, 7]], q_pids[[0, 1, 4, 6, 7]], g_pids, q_camids[[0, 1, 4, 6, 7]], g_camids, max_rank=5
    )
    assert result.num_skipped_queries == 5 + present.num_skipped_queries
    assert result.num_valid_queries == present.num_valid_queries
    np.testing.assert_array_equal(result.cmc, present.cmc)
    assert result.mAP == present.mAP


# ---------------------------------------------------------------------------------------------------
# CUHK03 single-shot protocol.
# ---------------------------------------------------------------------------------------------------
# Query pid 1 cam 0; gallery (pid, cam, distance): g0 (2, 1, 0.1), g1 (1, 1, 0.2), g2 (2, 2, 0.3),
# g3 (1, 2, 0.4). Nothing is removed. Each identity has two images; a sample keeps one of each:
#   pid 1 sample g1 or g3, pid 2 sample g0 or g2 (each 1/2). pid 1 ranks first only for (g1, g2):
#   expected CMC = [1/4, 1, 1, 1] (the sampled ranking has 2 items; padded with 1 up to max_rank 4).
# AP and INP use the whole kept ranking g0 g1 g2 g3 (matches at ranks 2 and 4):
#   AP = (1/2 + 2/4) / 2 = 0.5 (the sampled-ranking AP would average 1 and 1/2 -> 0.625), INP = 2/4.
CUHK_DISTMAT = np.array([[0.1, 0.2, 0.3, 0.4]])
CUHK_ARGS = (CUHK_DISTMAT, [1], [2, 1, 2, 1], [0], [1, 1, 2, 2])


def test_cuhk03_hand_case_converges_to_exact_expectation():
    result = evaluate_cuhk03(*CUHK_ARGS, max_rank=4, num_repeats=20000, seed=0)
    assert result.cmc[0] == pytest.approx(0.25, abs=0.02)  # binomial std ~0.003
    np.testing.assert_array_equal(result.cmc[1:], [1, 1, 1])
    assert result.mAP == 0.5  # the whole kept ranking, not the samples
    assert result.mINP == 0.5
    assert (result.num_valid_queries, result.num_skipped_queries) == (1, 0)


def test_cuhk03_cmc_is_multiple_of_one_over_num_repeats():
    for num_repeats in (1, 3, 7):
        result = evaluate_cuhk03(*CUHK_ARGS, max_rank=4, num_repeats=num_repeats, seed=5)
        scaled = result.cmc[0] * num_repeats
        assert scaled == pytest.approx(round(scaled), abs=1e-5)


def test_cuhk03_single_repeat_outcome_varies_with_seed():
    top1 = {float(evaluate_cuhk03(*CUHK_ARGS, max_rank=4, num_repeats=1, seed=seed).cmc[0]) for seed in range(30)}
    assert top1 == {0.0, 1.0}


def test_cuhk03_deterministic_for_a_seed_and_seeds_can_differ():
    rng = np.random.default_rng(11)
    args = random_problem(rng, 30, 60, 8, 3)
    first = evaluate_cuhk03(*args, max_rank=10, seed=123)
    second = evaluate_cuhk03(*args, max_rank=10, seed=123)
    np.testing.assert_array_equal(first.cmc, second.cmc)
    cmcs = [evaluate_cuhk03(*args, max_rank=10, seed=seed).cmc for seed in range(5)]
    assert any(not np.array_equal(cmcs[0], other) for other in cmcs[1:])


def test_cuhk03_seed_none_runs_and_generator_is_not_global_state():
    np.random.seed(0)
    before = np.random.random()
    np.random.seed(0)
    evaluate_cuhk03(*CUHK_ARGS, max_rank=4, num_repeats=50, seed=None)
    assert np.random.random() == before


def test_cuhk03_hand_case_from_market_section():
    # HAND case. q0 kept ranking g1(2) g2(1) g3(0) g4(1) g5(3): pid 2 always first; pid 1 is sampled as
    # g2 (rank 2) or g4 (rank 3, after g1 and g3) -> CMC [0, 1/2, 1, 1, 1] in expectation.
    # q1: g1 (pid 2) is that identity's only image and ranks first -> CMC all ones. q2 skipped.
    # Mean: [0.5, 0.75, 1, 1, 1]. AP/INP equal the Market values (whole kept ranking).
    result = evaluate_cuhk03(*HAND_ARGS, max_rank=5, num_repeats=20000, seed=1)
    assert result.cmc[0] == 0.5
    assert result.cmc[1] == pytest.approx(0.75, abs=0.01)
    np.testing.assert_array_equal(result.cmc[2:], [1, 1, 1])
    assert result.mAP == 0.75 and result.mINP == 0.75
    assert (result.num_valid_queries, result.num_skipped_queries) == (2, 1)


@pytest.mark.parametrize("seed", range(6))
def test_cuhk03_equals_market_when_every_identity_has_one_gallery_image(seed):
    rng = np.random.default_rng(200 + seed)
    num_gallery = 25
    distmat = rng.random((12, num_gallery))
    g_pids = rng.permutation(num_gallery) + 1  # each pid once
    g_camids = rng.integers(0, 3, size=num_gallery)
    q_pids = rng.choice(g_pids, size=12)
    q_pids[0] = 999  # absent -> skipped
    q_camids = rng.integers(0, 3, size=12)
    market = evaluate_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=10)
    cuhk = evaluate_cuhk03(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=10, num_repeats=4, seed=seed)
    np.testing.assert_array_equal(cuhk.cmc, market.cmc)
    assert cuhk.mAP == market.mAP and cuhk.mINP == market.mINP
    assert cuhk.num_valid_queries == market.num_valid_queries
    assert cuhk.num_skipped_queries == market.num_skipped_queries >= 1


@pytest.mark.parametrize("seed", range(4))
def test_cuhk03_ap_and_inp_equal_market_on_random_data(seed):
    rng = np.random.default_rng(300 + seed)
    args = random_problem(rng, 25, 50, 6, 3, integer_distances=bool(seed % 2))
    market = evaluate_market1501(*args, max_rank=20)
    cuhk = evaluate_cuhk03(*args, max_rank=20, num_repeats=3, seed=seed)
    assert cuhk.mAP == market.mAP and cuhk.mINP == market.mINP
    assert cuhk.cmc.shape == market.cmc.shape == (20,)
    assert cuhk.cmc.dtype == np.float32
    # At most num_ids identities in a sampled ranking: CMC is 1 from rank 6 on.
    np.testing.assert_array_equal(cuhk.cmc[5:], 1)
    assert np.all(np.diff(cuhk.cmc) >= 0)


def test_cuhk03_small_gallery_warns():
    with pytest.warns(UserWarning, match="smaller than max_rank"):
        result = evaluate_cuhk03(*CUHK_ARGS)
    assert result.cmc.shape == (4,)


# ---------------------------------------------------------------------------------------------------
# Validation.
# ---------------------------------------------------------------------------------------------------
def _replace(index, value):
    args = list(HAND_ARGS)
    args[index] = value
    return args


@pytest.mark.parametrize("evaluate", EVALUATORS)
@pytest.mark.parametrize(
    "args, match",
    [
        (_replace(0, np.zeros(6)), "distmat: expected a 2-D"),
        (_replace(0, np.zeros((3, 6, 1))), "distmat: expected a 2-D"),
        (_replace(0, np.zeros((3, 6), dtype=complex)), "distmat: expected real distances"),
        (_replace(0, np.full((3, 6), "a")), "distmat: expected real distances"),
        (_replace(0, np.zeros((0, 6))), "at least one query row and one gallery column"),
        (_replace(0, np.zeros((3, 0))), "at least one query row and one gallery column"),
        (_replace(0, np.where(np.eye(3, 6) > 0, np.nan, HAND_DISTMAT)), "distmat: expected comparable distances.*got NaN"),
        (_replace(1, np.array([1, 2])), "q_pids: expected length 3 .distmat.s rows .queries.., got 2"),
        (_replace(3, np.array([0, 0, 0, 0])), "q_camids: expected length 3 .distmat.s rows .queries.., got 4"),
        (_replace(2, np.array([1, 2, 1, 0, 1])), "g_pids: expected length 6 .distmat.s columns .gallery items.., got 5"),
        (_replace(4, np.zeros(7, dtype=int)), "g_camids: expected length 6 .distmat.s columns .gallery items.., got 7"),
        (_replace(1, np.array([[1, 2, 3]])), "q_pids: expected a 1-D array"),
        (_replace(1, np.array([1.0, 2.5, 3.0])), "q_pids: expected integer labels.*non-integral"),
        (_replace(2, np.array([1, 2, 1, 0, 1, np.nan])), "g_pids: expected integer labels"),
        (_replace(3, np.array(["a", "b", "c"])), "q_camids: expected integer labels"),
        (_replace(4, np.array([0, 1, 1, 1, 2, 0.5])), "g_camids: expected integer labels"),
    ],
)
def test_invalid_inputs_raise_naming_the_argument(evaluate, args, match):
    with pytest.raises(ValueError, match=match):
        evaluate(*args, max_rank=5)


@pytest.mark.parametrize("evaluate", EVALUATORS)
@pytest.mark.parametrize("max_rank, match", [(0, "max_rank: expected an integer >= 1"), (-3, "max_rank: expected an integer >= 1"),
                                             (2.5, "max_rank: expected an integer"), (True, "max_rank: expected an integer")])
def test_invalid_max_rank(evaluate, max_rank, match):
    with pytest.raises(ValueError, match=match):
        evaluate(*HAND_ARGS, max_rank=max_rank)


@pytest.mark.parametrize("num_repeats, match", [(0, "num_repeats: expected an integer >= 1"), (1.0, "num_repeats: expected an integer")])
def test_invalid_num_repeats(num_repeats, match):
    with pytest.raises(ValueError, match=match):
        evaluate_cuhk03(*HAND_ARGS, max_rank=5, num_repeats=num_repeats)


@pytest.mark.parametrize("evaluate", EVALUATORS)
def test_all_queries_without_valid_match_raise(evaluate):
    # q pid 3 cam 0 only has g5 (pid 3, cam 0) -> removed; pid 42 is absent.
    with pytest.raises(ValueError, match="all queries have no valid gallery match"):
        evaluate(HAND_DISTMAT[[2, 2]], [3, 42], HAND_G_PIDS, [0, 0], HAND_G_CAMIDS, max_rank=5)
