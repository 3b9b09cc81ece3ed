"""reidfast.evaluate (cpu and torch backends vs reference, bit for bit), verification metrics and ReIDEvaluator."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reidfast
from reidfast import _dispatch
from reidfast.kernels.torch import evaluate as torch_evaluate
from reidfast.ops import evaluation as evaluation_op
from reidfast.ops.evaluation import backends as evaluation_backends, checks as evaluation_checks, cuhk03, pairwise_sum
from reidfast.reference.evaluation import evaluate_cuhk03, evaluate_market1501
from reidfast.reference.rerank import re_ranking

from conftest import DEVICES

NATIVE = reidfast.backends()["cpu"].available
CPU = pytest.param("cpu", marks=pytest.mark.skipif(not NATIVE, reason="native module not built"))
FAST_BACKENDS = [CPU, "torch"]  # compared with the reference; torch runs on CPU tensors here, on CUDA ones too
BACKENDS = ["reference", *FAST_BACKENDS]


def run_evaluate(backend, *args, **kwargs):
    """reidfast.evaluate on one forced backend, with its warnings silenced."""
    with reidfast.use_backend(backend), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return reidfast.evaluate(*args, **kwargs)


def random_problem(rng, num_query, num_gallery, num_ids, num_cams, ties=False, dtype=np.float64):
    """Random labels (pid 0 = distractors, present like any other pid) and distances; ties: integers 0..3."""
    distmat = rng.integers(0, 4, (num_query, num_gallery)) if ties else rng.random((num_query, num_gallery))
    q_pids = rng.integers(0, num_ids, num_query)
    g_pids = rng.integers(0, num_ids, num_gallery)
    q_camids = rng.integers(0, num_cams, num_query)
    g_camids = rng.integers(0, num_cams, num_gallery)
    return distmat.astype(dtype), q_pids, g_pids, q_camids, g_camids


def assert_same_result(result, expected):
    """Bit-identical CMC, mAP, mINP and query counts (expected: a reference EvaluationResult or RankingResult)."""
    np.testing.assert_array_equal(result.cmc, expected.cmc)
    assert result.cmc.dtype == np.float32
    assert result.mAP == expected.mAP, (result.mAP, expected.mAP, result.mAP - expected.mAP)
    assert result.mINP == expected.mINP, (result.mINP, expected.mINP)
    assert result.num_valid_queries == expected.num_valid_queries
    assert result.num_skipped_queries == expected.num_skipped_queries
    # Per valid query, in query order: bit-identical too.
    np.testing.assert_array_equal(result.average_precision, expected.average_precision)
    np.testing.assert_array_equal(result.inverse_negative_penalty, expected.inverse_negative_penalty)
    assert result.average_precision.shape == (expected.num_valid_queries,)


def reference_market(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate_market1501(np.asarray(distmat), q_pids, g_pids, q_camids, g_camids, max_rank)


# ---------------------------------------------------------------------------------------------------
# Hand-computed cases.
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_case_ranks_1_3_6(backend):
    # One query (pid 1, cam 0). Gallery in distance order: g0 match, g1, g2 match, g3, g4 (pid 1 cam 0:
    # removed), g5, g6 match -> kept ranking m . m . . m: match ranks 1, 3, 6.
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.6]])
    g_pids = np.array([1, 2, 1, 0, 1, 3, 1])
    g_camids = np.array([1, 0, 2, 0, 0, 1, 1])
    result = run_evaluate(backend, distmat, [1], g_pids, [0], g_camids, max_rank=6)
    np.testing.assert_array_equal(result.cmc, np.ones(6, dtype=np.float32))
    assert result.mAP == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 3, abs=1e-15)
    assert result.mINP == pytest.approx(3 / 6, abs=1e-15)
    assert (result.num_valid_queries, result.num_skipped_queries) == (1, 0)
    np.testing.assert_allclose(result.average_precision, [(1 / 1 + 2 / 3 + 3 / 6) / 3], rtol=0, atol=1e-15)
    np.testing.assert_allclose(result.inverse_negative_penalty, [3 / 6], rtol=0, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_case_ties_are_ranked_by_gallery_index(backend):
    # All distances tie: the kept ranking is the gallery order. Matches at g1 and g3 -> ranks 2 and 4.
    distmat = np.zeros((1, 5), dtype=np.float32)
    result = run_evaluate(backend, distmat, [7], [3, 7, 0, 7, 4], [0], [1, 1, 1, 1, 1], max_rank=5)
    np.testing.assert_array_equal(result.cmc, [0, 1, 1, 1, 1])
    assert result.mAP == pytest.approx((1 / 2 + 2 / 4) / 2, abs=1e-15)
    assert result.mINP == pytest.approx(2 / 4, abs=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_case_with_skipped_query_warns_once(backend):
    # q0: match rank 2 of kept g1..g5; q1: match first (tie broken by index); q2: only image in own camera.
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.5, 0.1, 0.1, 0.1, 0.9, 0.2], [0.3, 0.2, 0.1, 0.4, 0.5, 0.6]])
    args = (distmat, [1, 2, 3], [1, 2, 1, 0, 1, 3], [0, 0, 0], [0, 1, 1, 1, 2, 0])
    with reidfast.use_backend(backend), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = reidfast.evaluate(*args, max_rank=5)
    assert [str(w.message) for w in caught if "skipped" in str(w.message)] == [
        "1 of 3 queries have no valid gallery match (no gallery item of their pid outside their camera) and "
        "were skipped; the metrics average the other 2"
    ]
    assert len(caught) == 1
    np.testing.assert_array_equal(result.cmc, [0.5, 1, 1, 1, 1])
    assert (result.mAP, result.mINP) == (0.75, 0.75)
    assert (result.num_valid_queries, result.num_skipped_queries) == (2, 1)
    assert result.backend == backend


# ---------------------------------------------------------------------------------------------------
# Native vs reference, bit for bit.
# ---------------------------------------------------------------------------------------------------
CASES = {
    # name: (num_query, num_gallery, num_ids, num_cams, ties, max_rank)
    "few-matches-per-query": (40, 500, 60, 4, False, 50),  # counting passes (k <= 32)
    "many-matches-per-query": (20, 900, 3, 2, False, 50),  # slot pass (k > 32)
    "ties-few-matches": (40, 300, 30, 3, True, 20),
    "ties-many-matches": (15, 600, 2, 3, True, 50),
    "tiny-gallery": (12, 7, 3, 2, False, 50),  # G < max_rank: CMC cut at G
    "many-skipped-queries": (40, 60, 50, 2, False, 10),
    "long-rows-pairwise-summation": (4, 20000, 2, 2, False, 50),  # AP summed over > 128 blocks, many levels
}


def small_chunks(monkeypatch, rows, num_gallery):
    """Make the torch backend work on about `rows` query rows per chunk (at least 1; fewer with CUHK03)."""
    budget = rows * num_gallery * evaluation_backends._DEVICE_BYTES_PER_DISTANCE
    monkeypatch.setattr(evaluation_backends, "DEVICE_CHUNK_BYTES", {"cpu": budget, "cuda": budget})


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_fast_backends_equal_reference(case, dtype, backend):
    num_query, num_gallery, num_ids, num_cams, ties, max_rank = CASES[case]
    rng = np.random.default_rng(list(CASES).index(case))
    args = random_problem(rng, num_query, num_gallery, num_ids, num_cams, ties, dtype)
    expected = reference_market(*args, max_rank=max_rank)
    if case == "many-skipped-queries":
        assert expected.num_skipped_queries > 10
    result = run_evaluate(backend, *args, max_rank=max_rank)
    assert result.backend == backend
    assert_same_result(result, expected)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    num_query=st.integers(1, 12),
    num_gallery=st.integers(1, 150),
    num_ids=st.integers(1, 12),
    num_cams=st.integers(1, 4),
    ties=st.booleans(),
    max_rank=st.integers(1, 60),
)
def test_fast_backends_equal_reference_on_random_problems(backend, seed, num_query, num_gallery, num_ids, num_cams, ties, max_rank):
    args = random_problem(np.random.default_rng(seed), num_query, num_gallery, num_ids, num_cams, ties)
    try:
        expected = reference_market(*args, max_rank=max_rank)
    except ValueError:  # every query skipped: both must refuse
        with pytest.raises(ValueError, match="all queries have no valid gallery match"):
            run_evaluate(backend, *args, max_rank=max_rank)
        return
    assert_same_result(run_evaluate(backend, *args, max_rank=max_rank), expected)


@pytest.mark.skipif(not NATIVE, reason="native module not built")
def test_native_per_query_ranks_match_a_brute_force_count():
    """The per-query outputs of the native pass: rank by counting, independent of any sort."""
    rng = np.random.default_rng(3)
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(rng, 25, 120, 8, 3, ties=True)
    labels = evaluation_checks.validate(distmat, q_pids, g_pids, q_camids, g_camids, 50)[1]
    first_rank, average_precision, inverse_negative_penalty = evaluation_backends._cpu_per_query(
        torch.from_numpy(distmat), labels
    )
    for q in range(distmat.shape[0]):
        valid = [v for v in range(distmat.shape[1]) if not (g_pids[v] == q_pids[q] and g_camids[v] == q_camids[q])]
        ranks = sorted(
            1 + sum(distmat[q, v] < distmat[q, j] or (distmat[q, v] == distmat[q, j] and v < j) for v in valid)
            for j in valid
            if g_pids[j] == q_pids[q]
        )
        if not ranks:
            assert first_rank[q] == 0
            continue
        assert first_rank[q] == ranks[0]
        assert average_precision[q] == pytest.approx(np.mean([(i + 1) / r for i, r in enumerate(ranks)]), abs=1e-15)
        assert inverse_negative_penalty[q] == len(ranks) / ranks[-1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda d: torch.from_numpy(d).half(), id="float16"),
        pytest.param(lambda d: torch.from_numpy(d).bfloat16(), id="bfloat16"),
        pytest.param(lambda d: torch.from_numpy((d * 8).astype(np.int32)), id="int32"),
        pytest.param(lambda d: torch.from_numpy((d * 8).astype(np.int64)), id="int64"),
        pytest.param(lambda d: torch.from_numpy(np.ascontiguousarray(d.T)).T, id="transposed"),
        pytest.param(lambda d: torch.from_numpy(np.pad(d, ((0, 0), (0, 9))))[:, : d.shape[1]], id="row-stride"),
    ],
)
def test_dtypes_and_strides_equal_the_reference(monkeypatch, backend, convert):
    """The cpu backend copies these (widening, transposing) block by block, the torch backend sorts them as
    they are, chunk by chunk: tiny blocks and chunks exercise both."""
    monkeypatch.setattr(evaluation_backends, "COPY_BLOCK_BYTES", 300 * 8)  # 1 row per block
    small_chunks(monkeypatch, rows=2, num_gallery=300)
    rng = np.random.default_rng(11)
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(rng, 9, 300, 10, 3)
    distmat = convert(distmat)
    expected = reference_market(distmat.float().numpy() if distmat.dtype == torch.bfloat16 else distmat.numpy(), q_pids, g_pids, q_camids, g_camids)
    assert_same_result(run_evaluate(backend, distmat, q_pids, g_pids, q_camids, g_camids), expected)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_huge_int64_distances_are_not_merged_into_ties(backend):
    # 2**60 and 2**60 + 1 are one float64: no backend may rank them as a tie (the torch one sorts int64).
    distmat = np.array([[2**60 + 1, 2**60]], dtype=np.int64)
    result = run_evaluate(backend, distmat, [1], [2, 1], [0], [1, 1])
    assert result.rank1 == 1.0 and result.mAP == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_zero_ties_with_zero(backend):
    # -0.0 == 0.0: a tie, ranked by gallery index (the match g2 comes second, after g0 and the removed g1).
    distmat = np.array([[0.0, 0.0, -0.0, 0.0]], dtype=np.float32)
    result = run_evaluate(backend, distmat, [5], [1, 5, 5, 2], [0], [1, 0, 1, 1], max_rank=3)
    np.testing.assert_array_equal(result.cmc, [0, 1, 1])
    assert result.mAP == 0.5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("protocol", ["market1501", "cuhk03"])
def test_int32_and_int64_labels(backend, label_dtype, protocol):
    rng = np.random.default_rng(12)
    distmat, *labels = random_problem(rng, 30, 200, 15, 3)
    expected = run_evaluate("reference", distmat, *labels, max_rank=20, protocol=protocol, seed=3, num_repeats=3)
    labels = [torch.from_numpy(a).to(label_dtype) for a in labels]
    assert_same_result(run_evaluate(backend, distmat, *labels, max_rank=20, protocol=protocol, seed=3, num_repeats=3), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_numpy_list_and_device_inputs_agree(device, backend):
    rng = np.random.default_rng(5)
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(rng, 30, 200, 20, 3)
    expected = reference_market(distmat, q_pids, g_pids, q_camids, g_camids)
    as_torch = [torch.from_numpy(a).to(device) for a in (distmat, q_pids, g_pids, q_camids, g_camids)]
    assert_same_result(run_evaluate(backend, *as_torch), expected)
    assert_same_result(run_evaluate(backend, distmat.tolist(), *(a.tolist() for a in (q_pids, g_pids, q_camids, g_camids))), expected)
    float_labels = [a.astype(np.float32) for a in (q_pids, g_pids, q_camids, g_camids)]
    assert_same_result(run_evaluate(backend, distmat, *float_labels), expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 7])
def test_cuhk03_equals_reference_for_a_seed(backend, seed):
    rng = np.random.default_rng(21)
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(rng, 25, 160, 12, 2)
    expected = evaluate_cuhk03(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20, seed=seed, num_repeats=4)
    result = run_evaluate(backend, distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20, protocol="cuhk03", seed=seed, num_repeats=4)
    assert_same_result(result, expected)
    assert result.protocol == "cuhk03" and result.backend == backend


def reference_cuhk03(distmat, q_pids, g_pids, q_camids, g_camids, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate_cuhk03(np.asarray(distmat), q_pids, g_pids, q_camids, g_camids, **kwargs)


CUHK03_CASES = {
    # name: (num_query, num_gallery, num_ids, num_cams, ties, max_rank, num_repeats)
    "few-images-per-identity": (30, 200, 60, 3, False, 20, 10),  # many identities with 1-5 images
    "many-images-per-identity": (12, 400, 4, 2, False, 50, 3),  # up to ~100 matches: many pivots
    "ties": (25, 150, 10, 3, True, 20, 5),
    "tiny-gallery": (10, 6, 3, 2, False, 50, 4),  # G < max_rank, and fewer identities than G
    "skipped-queries": (40, 60, 50, 2, False, 10, 2),
    "one-repeat": (20, 120, 15, 3, False, 20, 1),
    "one-camera-per-gallery-identity": (20, 100, 10, 1, False, 20, 3),  # every query skipped but...
}


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("case", list(CUHK03_CASES), ids=list(CUHK03_CASES))
def test_cuhk03_fast_backends_equal_reference(monkeypatch, case, backend):
    num_query, num_gallery, num_ids, num_cams, ties, max_rank, num_repeats = CUHK03_CASES[case]
    rng = np.random.default_rng(100 + list(CUHK03_CASES).index(case))
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(rng, num_query, num_gallery, num_ids, num_cams, ties)
    if case == "one-camera-per-gallery-identity":
        q_camids = q_camids + 1  # ...queries come from another camera: every query is valid
    # Blocks of 3 queries (cpu draws, torch chunks): the draws must continue across blocks in query order.
    monkeypatch.setattr(cuhk03, "CUHK03_DRAW_BLOCK_BYTES", 3 * 2 * 8 * num_repeats * np.unique(g_pids).size)
    small_chunks(monkeypatch, rows=3, num_gallery=num_gallery)
    for seed in (0, 1, 12345):
        kwargs = dict(max_rank=max_rank, num_repeats=num_repeats, seed=seed)
        expected = reference_cuhk03(distmat, q_pids, g_pids, q_camids, g_camids, **kwargs)
        if case == "skipped-queries":
            assert expected.num_skipped_queries > 10
        result = run_evaluate(backend, distmat, q_pids, g_pids, q_camids, g_camids, protocol="cuhk03", **kwargs)
        assert result.backend == backend and result.protocol == "cuhk03"
        assert_same_result(result, expected)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    num_query=st.integers(1, 10),
    num_gallery=st.integers(1, 80),
    num_ids=st.integers(1, 10),
    num_cams=st.integers(1, 3),
    ties=st.booleans(),
    max_rank=st.integers(1, 30),
    num_repeats=st.integers(1, 6),
)
def test_cuhk03_fast_backends_equal_reference_on_random_problems(
    backend, seed, num_query, num_gallery, num_ids, num_cams, ties, max_rank, num_repeats
):
    args = random_problem(np.random.default_rng(seed), num_query, num_gallery, num_ids, num_cams, ties)
    kwargs = dict(max_rank=max_rank, num_repeats=num_repeats, seed=seed)
    try:
        expected = reference_cuhk03(*args, **kwargs)
    except ValueError:  # every query skipped: both must refuse
        with pytest.raises(ValueError, match="all queries have no valid gallery match"):
            run_evaluate(backend, *args, protocol="cuhk03", **kwargs)
        return
    assert_same_result(run_evaluate(backend, *args, protocol="cuhk03", **kwargs), expected)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_cuhk03_dtypes_equal_the_reference(backend):
    rng = np.random.default_rng(13)
    distmat, *labels = random_problem(rng, 15, 120, 10, 3)
    for converted in (torch.from_numpy(distmat).half(), torch.from_numpy(distmat).float(), torch.from_numpy((distmat * 8).astype(np.int32))):
        as_numpy = converted.float().numpy() if converted.dtype == torch.float16 else converted.numpy()
        expected = reference_cuhk03(as_numpy, *labels, max_rank=20, num_repeats=3, seed=4)
        assert_same_result(run_evaluate(backend, converted, *labels, max_rank=20, protocol="cuhk03", num_repeats=3, seed=4), expected)


def brute_force_sampled_ranks(distmat, q_pids, g_pids, q_camids, g_camids, offsets):
    """Per query and repeat, the sampled gallery built literally: the o-th kept image of each identity."""
    identities = np.unique(g_pids)
    ranks = np.zeros(offsets.shape[:2], dtype=np.int64)
    for q in range(distmat.shape[0]):
        order = np.argsort(distmat[q], kind="stable")
        kept = [g for g in order if not (g_pids[g] == q_pids[q] and g_camids[g] == q_camids[q])]
        if not any(g_pids[g] == q_pids[q] for g in kept):
            continue
        for r in range(offsets.shape[1]):
            chosen = [[g for g in kept if g_pids[g] == pid][offsets[q, r, j]] for j, pid in enumerate(identities)
                      if any(g_pids[g] == pid for g in kept)]
            sampled = [g for g in kept if g in chosen]  # ranking order
            ranks[q, r] = 1 + [g_pids[g] for g in sampled].index(q_pids[q])
    return ranks


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_cuhk03_sampled_ranks_match_a_literal_sampled_gallery(backend):
    """The per-repeat ranks of both fast passes, for offsets drawn here, against a literal construction."""
    rng = np.random.default_rng(5)
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(rng, 12, 90, 6, 3, ties=True)
    q_pids[3] = 99  # a skipped query: no draws, rank 0
    labels = evaluation_checks.validate(distmat, q_pids, g_pids, q_camids, g_camids, 20)[1]
    sampling = cuhk03.Cuhk03Sampling(labels, num_repeats=4, seed=9)
    offsets, valid_rows = sampling.draw(0, 12), sampling.valid_rows(0, 12)
    expected = brute_force_sampled_ranks(distmat, q_pids, g_pids, q_camids, g_camids, offsets)
    assert (expected[valid_rows] > 1).any() and valid_rows.size < 12  # a meaningful case: skipped rows too
    if backend == "cpu":
        ranks = np.empty((12, 4), dtype=np.int64)
        view = reidfast._native.view
        reidfast._native._C.evaluate_cuhk03_sampled_ranks_cpu(
            *(view(t) for t in (torch.from_numpy(distmat), labels.q_pids, labels.g_pids, labels.q_camids, labels.g_camids,
                                sampling.identity, torch.from_numpy(offsets), torch.from_numpy(ranks))))
    else:
        sampling = cuhk03.Cuhk03Sampling(labels, num_repeats=4, seed=9)  # the same draws again
        num_matches, _, _, match_gallery_index = torch_evaluate.match_positions(
            torch.from_numpy(distmat), labels.q_pids, labels.g_pids, labels.q_camids, labels.g_camids)
        ranks = np.zeros((12, 4), dtype=np.int64)
        ranks[valid_rows] = torch_evaluate.cuhk03_sampled_ranks(
            torch.from_numpy(distmat), sampling, 0, 12, num_matches, match_gallery_index, sampling.identity)
    np.testing.assert_array_equal(ranks, expected)


@pytest.mark.skipif(not NATIVE, reason="native module not built")
def test_native_cuhk03_pass_rejects_an_offset_past_the_matches():
    distmat = torch.zeros((1, 3), dtype=torch.float64)
    pids, camids = torch.tensor([1]), torch.tensor([0])
    g_pids, g_camids, identity = torch.tensor([1, 2, 1]), torch.tensor([1, 1, 1]), torch.tensor([0, 1, 0])
    offsets = torch.tensor([[[2, 0]]])  # pid 1 has 2 matches: offset 2 is out of range
    ranks = torch.empty((1, 1), dtype=torch.int64)
    # Every tensor stays referenced here while the kernel runs: views borrow their memory (an inline
    # torch.empty would be freed once the views are made, and the kernel would write into freed memory).
    arrays = (distmat, pids, g_pids, camids, g_camids, identity, offsets, ranks)
    with pytest.raises(ValueError, match="offsets: query 0 samples a match index outside"):
        reidfast._native._C.evaluate_cuhk03_sampled_ranks_cpu(*[reidfast._native.view(t) for t in arrays])


@pytest.mark.skipif(not NATIVE, reason="native module not built")
@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.MT19937, np.random.Philox, np.random.SFC64])
def test_native_draws_reproduce_numpy(bit_generator):
    # The self-check that enables the native draws passes with this numpy, so the fast path is what runs.
    assert cuhk03.native_draws_match_numpy(bit_generator)
    images_per_identity = np.array([3, 1, 8, 2**31 + 5, 40], dtype=np.int64)
    own_identity, num_matches = np.array([2, 0, 4, 1], dtype=np.int64), np.array([5, 0, 1, 2], dtype=np.int64)
    native_rng, numpy_rng = np.random.Generator(bit_generator(3)), np.random.Generator(bit_generator(3))
    offsets = np.full((4, 50, 5), -1, dtype=np.int64)
    cuhk03.native_draw(native_rng, images_per_identity, own_identity, num_matches, offsets)
    for q in range(4):
        if num_matches[q] == 0:
            assert (offsets[q] == -1).all()  # a skipped query: untouched, no draws
            continue
        bounds = images_per_identity.copy()
        bounds[own_identity[q]] = num_matches[q]
        np.testing.assert_array_equal(offsets[q], numpy_rng.integers(0, bounds, size=(50, 5)))
    assert native_rng.random() == numpy_rng.random()  # the same bits consumed


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_cuhk03_with_numpy_draws_equals_reference(monkeypatch, backend):
    """The fallback when the native draws are unavailable: one Generator.integers call per block."""
    monkeypatch.setattr(cuhk03, "native_draws_match_numpy", lambda bit_generator_type: False)
    monkeypatch.setattr(cuhk03, "CUHK03_DRAW_BLOCK_BYTES", 4 * 2 * 8 * 5 * 20)  # 4 queries per block
    small_chunks(monkeypatch, rows=4, num_gallery=150)
    rng = np.random.default_rng(31)
    args = random_problem(rng, 30, 150, 20, 3)
    for seed in (0, 5):
        expected = reference_cuhk03(*args, max_rank=20, num_repeats=5, seed=seed)
        assert_same_result(run_evaluate(backend, *args, max_rank=20, protocol="cuhk03", num_repeats=5, seed=seed), expected)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_cuhk03_consumes_a_given_generator_as_the_reference_does(backend):
    args = random_problem(np.random.default_rng(32), 20, 100, 12, 3)
    ours, theirs = np.random.default_rng(8), np.random.default_rng(8)
    result = run_evaluate(backend, *args, max_rank=20, protocol="cuhk03", num_repeats=3, seed=ours)
    assert_same_result(result, reference_cuhk03(*args, max_rank=20, num_repeats=3, seed=theirs))
    assert ours.random() == theirs.random()


def test_cuhk03_draws_must_follow_the_query_order():
    labels = evaluation_checks.validate(np.zeros((4, 3)), [1, 2, 1, 2], [1, 2, 2], [0, 0, 0, 0], [1, 1, 1], 3)[1]
    sampling = cuhk03.Cuhk03Sampling(labels, num_repeats=2, seed=0)
    sampling.draw(0, 2)
    with pytest.raises(RuntimeError, match="expected query 2, got 3"):
        sampling.draw(3, 4)


# ---------------------------------------------------------------------------------------------------
# numpy's pairwise summation of sparse vectors (the torch backend's AP), against np.sum itself.
# ---------------------------------------------------------------------------------------------------
def dense_sums(positions_per_vector, values_per_vector, lengths):
    sums = []
    for positions, values, length in zip(positions_per_vector, values_per_vector, lengths):
        dense = np.zeros(length)
        dense[positions] = values
        sums.append(dense.sum())
    return np.array(sums)


def sparse_sums(positions_per_vector, values_per_vector, lengths):
    segment = np.repeat(np.arange(len(lengths)), [len(p) for p in positions_per_vector])
    position = np.concatenate([np.asarray(p, dtype=np.int64) for p in positions_per_vector] + [np.zeros(0, np.int64)])
    value = np.concatenate([np.asarray(v, dtype=np.float64) for v in values_per_vector] + [np.zeros(0)])
    return pairwise_sum.numpy_sum_of_sparse(segment, position, value, np.asarray(lengths, dtype=np.int64))


def test_sparse_pairwise_sum_is_numpys_sum_around_block_boundaries():
    rng = np.random.default_rng(0)
    lengths = [1, 7, 8, 9, 15, 16, 127, 128, 129, 136, 255, 256, 257, 1000, 1031, 4096, 20011, 131072, 250001]
    positions, values = [], []
    for length in lengths:
        count = int(rng.integers(1, min(length, 400) + 1))
        positions.append(np.sort(rng.choice(length, count, replace=False)))
        values.append(rng.random(count) * 10.0 ** rng.integers(-8, 8, count))  # wide range: rounding visible
    expected = dense_sums(positions, values, lengths)
    np.testing.assert_array_equal(sparse_sums(positions, values, lengths), expected)
    # All vectors at once equal each one alone, and an empty vector sums to 0.
    np.testing.assert_array_equal(sparse_sums(positions + [[]], values + [[]], lengths + [50]), np.r_[expected, 0.0])


@settings(max_examples=200, deadline=None)
@given(data=st.data(), num_vectors=st.integers(1, 5))
def test_sparse_pairwise_sum_is_numpys_sum_on_random_vectors(data, num_vectors):
    lengths, positions, values = [], [], []
    for _ in range(num_vectors):
        length = data.draw(st.integers(1, 3000))
        chosen = data.draw(st.sets(st.integers(0, length - 1), min_size=1, max_size=min(length, 200)))
        lengths.append(length)
        positions.append(sorted(chosen))
        values.append(data.draw(st.lists(st.floats(1e-9, 1e9), min_size=len(chosen), max_size=len(chosen))))
    np.testing.assert_array_equal(sparse_sums(positions, values, lengths), dense_sums(positions, values, lengths))


def test_default_backend_by_device(monkeypatch):
    distmat = np.random.default_rng(0).random((3, 4))
    args = (distmat, [1, 2, 3], [1, 2, 3, 1], [0, 0, 0], [1, 1, 1, 1])
    assert reidfast.evaluate(*args, max_rank=4).backend == ("cpu" if NATIVE else "reference")
    # Without the native module host inputs go to the reference (faster than the torch backend's row sorts).
    monkeypatch.setattr(_dispatch, "_cpu_info", lambda: _dispatch.BackendInfo("cpu", False, "simulated: not built"))
    assert reidfast.evaluate(*args, max_rank=4).backend == "reference"
    with reidfast.use_backend("torch"):
        assert reidfast.evaluate(*args, max_rank=4).backend == "torch"
    monkeypatch.undo()
    if torch.cuda.is_available():  # CUDA inputs stay on the GPU: the torch backend
        assert evaluation_op.EVALUATE.select(torch.device("cuda"))[0] == "torch"
        result = reidfast.evaluate(torch.from_numpy(distmat).cuda(), [1, 2, 3], [1, 2, 3, 1], [0, 0, 0], [1, 1, 1, 1], max_rank=4)
        assert result.backend == "torch"


def test_forcing_a_backend_without_an_evaluate_implementation_says_so():
    usable = [name for name in ("cuda", "triton") if reidfast.backends()[name].available]
    if not usable:
        pytest.skip("neither the cuda nor the triton backend is usable here")
    with reidfast.use_backend(usable[0]), pytest.raises(reidfast.BackendUnavailableError, match=f"evaluate has no '{usable[0]}'"):
        reidfast.evaluate(np.zeros((1, 1)), [1], [1], [0], [1], max_rank=1)


# ---------------------------------------------------------------------------------------------------
# The result object.
# ---------------------------------------------------------------------------------------------------
def test_result_ranks_summary_and_dict():
    rng = np.random.default_rng(8)
    args = random_problem(rng, 40, 300, 25, 3)
    result = run_evaluate("reference", *args, max_rank=20)
    assert isinstance(result, reidfast.RankingResult)
    assert (result.rank1, result.rank5, result.rank10) == (float(result.cmc[0]), float(result.cmc[4]), float(result.cmc[9]))
    assert math.isnan(result.cmc_at(21))  # past max_rank: unknown
    with pytest.raises(ValueError, match="k: expected an integer >= 1"):
        result.cmc_at(0)
    text = result.summary()
    assert "Market-1501" in text and f"{100 * result.mAP:6.2f}%" in text and "Rank-10" in text
    as_dict = json.loads(json.dumps(result.to_dict()))
    assert as_dict["mAP"] == result.mAP and as_dict["cmc"] == [float(v) for v in result.cmc]
    assert as_dict["num_valid_queries"] == result.num_valid_queries and as_dict["backend"] == "reference"
    with pytest.raises(ValueError):
        result.cmc[0] = 0  # read-only


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_gallery_warns_and_reports_rank5_as_one(backend):
    distmat = np.array([[0.3, 0.1, 0.2]])
    with reidfast.use_backend(backend), pytest.warns(UserWarning, match="smaller than max_rank"):
        result = reidfast.evaluate(distmat, [1], [2, 3, 1], [0], [1, 1, 1])
    np.testing.assert_array_equal(result.cmc, [0, 1, 1])
    assert result.rank5 == 1.0 and result.rank10 == 1.0
    assert "n/a" not in result.summary()


# ---------------------------------------------------------------------------------------------------
# Bad input: clear ValueErrors naming the argument.
# ---------------------------------------------------------------------------------------------------
GOOD = (np.zeros((2, 3)), [1, 2], [1, 2, 3], [0, 0], [1, 1, 1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "position,value,message",
    [
        (0, np.zeros(3), "distmat: expected a 2-D"),
        (0, np.zeros((0, 3)), "distmat: expected at least one query row"),
        (0, np.zeros((2, 3), dtype=bool), "distmat: expected real distances"),
        (0, np.array([[0.0, np.nan, 1], [0, 0, 0]]), r"distmat: expected comparable distances .*, got 1 NaN distance"),
        (1, [1, 2, 3], r"q_pids: expected length 2 \(distmat\'s rows \(queries\)\), got 3"),
        (2, [1, 2], r"g_pids: expected length 3 \(distmat\'s columns \(gallery items\)\), got 2"),
        (3, [0], r"q_camids: expected length 2 \(distmat\'s rows \(queries\)\), got 1"),
        (4, [1, 1, 1, 1], r"g_camids: expected length 3 \(distmat\'s columns \(gallery items\)\), got 4"),
        (1, [[1, 2]], "q_pids: expected a 1-D array"),
        (2, [1.5, 2, 3], "g_pids: expected integer labels"),
        (3, [True, False], "q_camids: expected integer labels"),
    ],
)
def test_bad_input_raises_naming_the_argument(backend, position, value, message):
    args = list(GOOD)
    args[position] = value
    with reidfast.use_backend(backend), pytest.raises(ValueError, match=message):
        reidfast.evaluate(*args, max_rank=3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_infinite_distances_are_allowed_and_nan_is_counted_across_blocks(monkeypatch, backend):
    rng = np.random.default_rng(9)
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(rng, 20, 50, 6, 3)
    distmat[0, :10], distmat[1, 5:20] = np.inf, -np.inf  # the sum is NaN, yet there is no NaN
    assert_same_result(run_evaluate(backend, distmat, q_pids, g_pids, q_camids, g_camids), reference_market(distmat, q_pids, g_pids, q_camids, g_camids))
    monkeypatch.setattr(evaluation_checks, "_NAN_CHECK_BLOCK_ELEMENTS", 60)  # one row per block
    distmat[[2, 3, 19], [0, 7, 49]] = np.nan
    with reidfast.use_backend(backend), pytest.raises(ValueError, match="distmat: expected comparable distances .*, got 3 NaN distance"):
        reidfast.evaluate(distmat, q_pids, g_pids, q_camids, g_camids)


@pytest.mark.parametrize("kwargs,message", [
    ({"max_rank": 0}, "max_rank: expected an integer >= 1"),
    ({"max_rank": True}, "max_rank: expected an integer >= 1"),
    ({"max_rank": 2.0}, "max_rank: expected an integer >= 1"),
    ({"protocol": "duke"}, "protocol: expected one of"),
    ({"num_repeats": 0}, "num_repeats: expected an integer >= 1"),
])
def test_bad_options_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        reidfast.evaluate(*GOOD, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_queries_invalid_raises(backend):
    # Every query's pid appears only in its own camera (or not at all).
    with reidfast.use_backend(backend), pytest.raises(ValueError, match="all queries have no valid gallery match"):
        reidfast.evaluate(np.zeros((2, 3)), [1, 9], [1, 2, 3], [0, 0], [0, 1, 1], max_rank=3)


# ---------------------------------------------------------------------------------------------------
# Verification metrics vs a direct computation.
# ---------------------------------------------------------------------------------------------------
def verification_problem(seed=0, num_query=40, num_gallery=300):
    rng = np.random.default_rng(seed)
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(rng, num_query, num_gallery, 15, 3)
    distmat = distmat - 0.4 * (q_pids[:, None] == g_pids[None, :])  # positives closer on average
    return distmat, q_pids, g_pids, q_camids, g_camids


def direct_pairs(distmat, q_pids, g_pids, q_camids, g_camids):
    same_pid = q_pids[:, None] == g_pids[None, :]
    valid = ~(same_pid & (q_camids[:, None] == g_camids[None, :]))
    return distmat[valid], same_pid[valid]


def test_verification_matches_direct_scikit_learn_and_brute_force():
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    args = verification_problem()
    distances, positive = direct_pairs(*args)
    result = reidfast.verification_metrics(*args)
    assert not result.sampled
    assert (result.num_positive_pairs, result.num_negative_pairs) == (positive.sum(), (~positive).sum())
    assert result.roc_auc == roc_auc_score(positive, -distances)

    # Brute force over every distance threshold: TPR/FPR and F1 by counting.
    thresholds = np.unique(distances)
    predicted = distances[None, :] <= thresholds[:, None]
    tpr = (predicted & positive).sum(1) / positive.sum()
    fpr = (predicted & ~positive).sum(1) / (~positive).sum()
    for target, value in result.tpr_at_fpr.items():
        assert value == pytest.approx(max([0.0, *tpr[fpr <= target]]), abs=1e-12)
    true_positive = (predicted & positive).sum(1)
    f1 = 2 * true_positive / (predicted.sum(1) + positive.sum())
    assert result.f1 == pytest.approx(f1.max(), abs=1e-12)
    assert result.threshold == thresholds[np.argmax(f1)]

    prediction = distances <= result.threshold
    assert result.precision == pytest.approx(precision_score(positive, prediction), abs=1e-12)
    assert result.recall == pytest.approx(recall_score(positive, prediction), abs=1e-12)
    assert result.f1 == pytest.approx(f1_score(positive, prediction), abs=1e-12)
    assert result.accuracy == pytest.approx(accuracy_score(positive, prediction), abs=1e-12)


def test_verification_at_a_given_threshold():
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    args = verification_problem(seed=1)
    distances, positive = direct_pairs(*args)
    result = reidfast.verification_metrics(*args, threshold=0.2)
    prediction = distances <= 0.2
    assert result.threshold == 0.2 and not result.threshold_is_best_f1
    assert (result.precision, result.recall, result.f1, result.accuracy) == pytest.approx(
        (precision_score(positive, prediction), recall_score(positive, prediction), f1_score(positive, prediction),
         accuracy_score(positive, prediction)), abs=1e-12)
    assert "given threshold" in result.summary()
    assert json.loads(json.dumps(result.to_dict()))["tpr_at_fpr"].keys() == {"1e-04", "1e-03", "1e-02"}


def test_verification_sampling_is_bounded_seeded_and_close_to_exact():
    args = verification_problem(seed=2, num_query=60, num_gallery=800)
    exact = reidfast.verification_metrics(*args)
    sampled = reidfast.verification_metrics(*args, max_pairs=12_000, seed=3)
    again = reidfast.verification_metrics(*args, max_pairs=12_000, seed=3)
    other = reidfast.verification_metrics(*args, max_pairs=12_000, seed=4)
    assert sampled.sampled and not exact.sampled
    assert sampled.num_sampled_positive_pairs + sampled.num_sampled_negative_pairs <= 12_000
    assert sampled.num_sampled_positive_pairs == exact.num_positive_pairs  # positives kept whole
    assert (sampled.num_positive_pairs, sampled.num_negative_pairs) == (exact.num_positive_pairs, exact.num_negative_pairs)
    assert sampled.to_dict() == again.to_dict()
    assert sampled.roc_auc != other.roc_auc
    # Weighted estimates of the full-pair values.
    assert sampled.roc_auc == pytest.approx(exact.roc_auc, abs=0.01)
    assert sampled.accuracy == pytest.approx(exact.accuracy, abs=0.01)
    assert sampled.precision == pytest.approx(exact.precision, abs=0.05)
    assert sampled.tpr_at_fpr[1e-2] == pytest.approx(exact.tpr_at_fpr[1e-2], abs=0.05)


def test_verification_sampling_of_positives_above_half_the_budget():
    args = verification_problem(seed=4, num_query=30, num_gallery=200)
    result = reidfast.verification_metrics(*args, max_pairs=100)
    assert result.num_sampled_positive_pairs == 50 and result.num_sampled_negative_pairs == 50
    assert result.num_positive_pairs > 50


@pytest.mark.parametrize("kwargs,message", [
    ({"distmat": np.array([[np.nan, 0.0]])}, "distmat: expected comparable distances, got NaN"),
    ({"distmat": np.zeros(3)}, "distmat: expected a non-empty 2-D"),
    ({"q_pids": [1, 2]}, "q_pids: expected a 1-D array of length 1"),
    ({"g_pids": [5, 6]}, "verification needs positive and negative pairs, got 0 positive"),
    ({"g_pids": [1, 1]}, "got 2 positive and 0 negative"),
    ({"max_pairs": 1}, "max_pairs: expected an integer >= 2"),
    ({"threshold": float("nan")}, "threshold: expected a distance"),
    ({"fpr_targets": (0.0,)}, r"fpr_targets: expected values in \(0, 1\]"),
])
def test_verification_bad_input(kwargs, message):
    args = {"distmat": np.array([[0.1, 0.2]]), "q_pids": [1], "g_pids": [1, 2], "q_camids": [0], "g_camids": [1, 1]}
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in ("max_pairs", "threshold", "fpr_targets")}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        reidfast.verification_metrics(**args, **options)


# ---------------------------------------------------------------------------------------------------
# ReIDEvaluator.
# ---------------------------------------------------------------------------------------------------
def feature_problem(seed=0, num_query=30, num_gallery=120, dim=16, num_ids=12):
    """Features clustered by identity, plus labels."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_ids, dim)).astype(np.float32)
    pids = rng.integers(0, num_ids, num_query + num_gallery)
    camids = rng.integers(0, 3, num_query + num_gallery)
    features = centers[pids] + rng.normal(scale=0.8, size=(pids.size, dim)).astype(np.float32)
    is_query = np.zeros(pids.size, dtype=bool)
    is_query[:num_query] = True
    order = rng.permutation(pids.size)  # queries and gallery interleaved
    return features[order], pids[order], camids[order], is_query[order]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_evaluator_equals_evaluate_on_pairwise_distances(metric):
    features, pids, camids, is_query = feature_problem()
    evaluator = reidfast.ReIDEvaluator(metric=metric, max_rank=20)
    for start in range(0, pids.size, 32):  # per batch, is_query per row
        rows = slice(start, start + 32)
        evaluator.update(torch.from_numpy(features[rows]), torch.from_numpy(pids[rows]), camids[rows], torch.from_numpy(is_query[rows]))
    assert len(evaluator) == pids.size
    result = evaluator.compute()
    distmat = reidfast.pairwise_distance(features[is_query], features[~is_query], metric=metric)
    expected = reidfast.evaluate(distmat, pids[is_query], pids[~is_query], camids[is_query], camids[~is_query], max_rank=20)
    assert_same_result(result.ranking, expected)
    assert (result.mAP, result.rank1, result.num_query, result.num_gallery) == (expected.mAP, expected.rank1, is_query.sum(), (~is_query).sum())
    assert result.reranked is None and result.verification is None


def test_evaluator_whole_batches_flagged_query_or_gallery_and_reset():
    features, pids, camids, is_query = feature_problem(seed=1)
    evaluator = reidfast.ReIDEvaluator(max_rank=10)
    evaluator.update(features[is_query], pids[is_query], camids[is_query], True)
    evaluator.update(features[~is_query], pids[~is_query], camids[~is_query], False)
    first = evaluator.compute()
    evaluator.reset()
    assert len(evaluator) == 0
    with pytest.raises(ValueError, match="needs at least one query and one gallery sample, got 0 queries"):
        evaluator.compute()
    evaluator.update(features[is_query], pids[is_query], camids[is_query], is_query=[True] * int(is_query.sum()))
    evaluator.update(features[~is_query], pids[~is_query], camids[~is_query], False)
    assert_same_result(evaluator.compute().ranking, first.ranking)


def test_evaluator_rerank_and_verification():
    features, pids, camids, is_query = feature_problem(seed=2)
    evaluator = reidfast.ReIDEvaluator(rerank=True, k1=6, k2=3, lambda_value=0.3, max_rank=10)
    evaluator.update(features, pids, camids, is_query)
    result = evaluator.compute(verification=True)
    qf, gf = torch.from_numpy(features[is_query]), torch.from_numpy(features[~is_query])
    distances = [reidfast.pairwise_distance(a, b).numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf))]
    reranked = re_ranking(*distances, k1=6, k2=3, lambda_value=0.3)
    labels = (pids[is_query], pids[~is_query], camids[is_query], camids[~is_query])
    assert_same_result(result.reranked, reidfast.evaluate(reranked, *labels, max_rank=10))
    assert result.verification.roc_auc == reidfast.verification_metrics(distances[0], *labels).roc_auc
    text = result.summary()
    assert "With k-reciprocal re-ranking" in text and "Verification" in text
    as_dict = json.loads(json.dumps(result.to_dict()))
    assert as_dict["reranked"]["mAP"] == result.reranked.mAP and as_dict["verification"]["f1"] == result.verification.f1
    assert evaluator.compute(rerank=False).reranked is None


def test_evaluator_cuhk03_protocol_and_device_none():
    features, pids, camids, is_query = feature_problem(seed=3)
    evaluator = reidfast.ReIDEvaluator(protocol="cuhk03", max_rank=10, device=None, seed=5)
    evaluator.update(torch.from_numpy(features), pids, camids, is_query)
    distmat = reidfast.pairwise_distance(features[is_query], features[~is_query])
    expected = evaluate_cuhk03(distmat, pids[is_query], pids[~is_query], camids[is_query], camids[~is_query], max_rank=10, seed=5)
    assert_same_result(evaluator.compute().ranking, expected)


@pytest.mark.parametrize("update_args,message", [
    ((np.zeros((4,)), [1] * 4, [0] * 4, True), "features: expected a 2-D"),
    ((np.zeros((4, 3), dtype=np.int64), [1] * 4, [0] * 4, True), "features: expected a 2-D .* float"),
    ((np.zeros((4, 3)), [1] * 3, [0] * 4, True), "pids: expected a 1-D array of length 4"),
    ((np.zeros((4, 3)), [1] * 4, [0] * 5, True), "camids: expected a 1-D array of length 4"),
    ((np.zeros((4, 3)), [1, 2, 3, 4.5], [0] * 4, True), "pids: expected integer labels"),
    ((np.zeros((4, 3)), [1] * 4, [True] * 4, True), "camids: expected integer labels"),
    ((np.zeros((4, 3)), [1] * 4, [0] * 4, [True] * 3), r"is_query: expected a bool or a \(4,\) bool array"),
    ((np.zeros((4, 3)), [1] * 4, [0] * 4, [1, 0, 1, 0]), "is_query: expected a bool"),
    ((np.zeros((4, 5)), [1] * 4, [0] * 4, True), "features: expected 3 features per row"),
])
def test_evaluator_update_bad_input(update_args, message):
    evaluator = reidfast.ReIDEvaluator()
    evaluator.update(np.zeros((2, 3), dtype=np.float32), [1, 2], [0, 0], True)
    with pytest.raises(ValueError, match=message):
        evaluator.update(*update_args)


@pytest.mark.parametrize("kwargs,message", [
    ({"metric": "manhattan"}, "metric: expected one of"),
    ({"protocol": "viper"}, "protocol: expected one of"),
    ({"max_rank": 0}, "max_rank: expected an integer >= 1"),
])
def test_evaluator_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        reidfast.ReIDEvaluator(**kwargs)
