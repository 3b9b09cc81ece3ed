"""The triton backend of reidfast.evaluate_features (rank counting fused into the Triton distance tile):
equal, bit for bit, to rf.evaluate(rf.pairwise_distance(...)) with the triton distance backend, and to the
reference where distances are exact; its counting kernel against reidfast.reference.evaluate_features.

Runs on CPU tensors under TRITON_INTERPRET=1 (set by conftest.py without CUDA), on CUDA tensors otherwise.
The interpreter is slow: small sets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

import reidfast  # noqa: E402
from reidfast.reference import evaluate_features as reference  # noqa: E402
from reidfast.reference import distance as reference_distance  # noqa: E402

from conftest import TRITON_TEST_DEVICE  # noqa: E402
from test_evaluate_features import assert_same, expected, features, make_problem, quiet, random_pivots  # noqa: E402

pytestmark = pytest.mark.triton

DEVICE = TRITON_TEST_DEVICE
if DEVICE is None:
    pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)


def on_device(problem):
    query, gallery, *labels = problem
    return (query.to(DEVICE), gallery.to(DEVICE), *labels)


def triton_expected(*problem, **kwargs):
    """rf.evaluate on the triton backend's rf.pairwise_distance: the matrix the triton pass never holds."""
    return expected(*problem, backend="triton", **kwargs)


def triton_features(*problem, **kwargs):
    result = features("triton", *problem, **kwargs)
    assert result.backend == "triton"
    return result


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("protocol", ["market1501", "cuhk03"])
@pytest.mark.parametrize("integer", [False, True], ids=["real", "ties"])
def test_equals_evaluate_of_triton_pairwise_distance(metric, protocol, integer):
    """Junk, distractors (gallery pid -1 and 0), ties (integer features), one or several launches
    (chunk_size 97 is no multiple of the 64-column tile)."""
    rng = np.random.default_rng(sum(map(ord, metric + protocol)) + integer)
    problem = on_device(make_problem(rng, 40, 300, 12, 20, integer=integer))
    want = triton_expected(*problem, metric=metric, protocol=protocol, max_rank=20)
    for chunk_size in (None, 97):
        assert_same(triton_features(*problem, metric=metric, protocol=protocol, max_rank=20, chunk_size=chunk_size), want)


def duplicated_matches_problem(rng):
    """Real-valued features where gallery items of other identities copy a query's correct matches, before
    and after them: the copies tie the matches only if the counting kernel's distances are bitwise the
    pivots' (pairwise_distance's), and then rank by gallery index."""
    query, gallery, q_pids, g_pids, q_camids, g_camids = make_problem(rng, 24, 200, 20, 12)
    gallery, g_pids, g_camids = gallery.clone(), g_pids.copy(), g_camids.copy()
    for q in range(0, 24, 2):
        matches = np.flatnonzero((g_pids == q_pids[q]) & (g_camids != q_camids[q]))
        others = np.flatnonzero(g_pids != q_pids[q])
        for match in matches[:3]:
            copy = rng.choice(others)
            gallery[copy] = gallery[match]
    return query, gallery, q_pids, g_pids, q_camids, g_camids


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_copies_of_matches_tie_them_exactly(metric):
    problem = on_device(duplicated_matches_problem(np.random.default_rng(1)))
    for protocol in ("market1501", "cuhk03"):
        want = triton_expected(*problem, metric=metric, protocol=protocol)
        assert_same(triton_features(*problem, metric=metric, protocol=protocol, chunk_size=70), want)


def test_equals_reference_on_exact_distances():
    """Integer features: every distance is exact in any order of operations, so the whole result equals the
    plain reference's (reidfast/reference/evaluate_features.py)."""
    query, gallery, *labels = make_problem(np.random.default_rng(5), 30, 250, 6, 15, integer=True)
    for protocol in ("market1501", "cuhk03"):
        want = quiet(reference.evaluate_features, query, gallery, *labels, metric="sqeuclidean", protocol=protocol)
        result = triton_features(query.to(DEVICE), gallery.to(DEVICE), *labels, metric="sqeuclidean", protocol=protocol)
        np.testing.assert_array_equal(result.cmc, want.cmc)
        assert (result.mAP, result.mINP) == (want.mAP, want.mINP)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype):
    problem = on_device(make_problem(np.random.default_rng(3), 30, 200, 16, 15, dtype=dtype))
    assert_same(triton_features(*problem, chunk_size=64), triton_expected(*problem))


def test_skipped_queries_and_queries_without_matches():
    query, gallery, q_pids, g_pids, q_camids, g_camids = make_problem(np.random.default_rng(2), 20, 150, 8, 10)
    q_pids = q_pids.copy()
    q_pids[:3] = 1000  # no gallery item of this pid
    g_camids = g_camids.copy()
    g_camids[g_pids == q_pids[3]] = q_camids[3]  # only same-camera items: all junk for query 3
    problem = on_device((query, gallery, q_pids, g_pids, q_camids, g_camids))
    with reidfast.use_backend("triton"), pytest.warns(UserWarning, match=r"\b\d+ of 20 queries have no valid gallery match"):
        result = reidfast.evaluate_features(*problem)
    assert result.num_skipped_queries >= 4
    assert_same(result, triton_expected(*problem))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_overflowing_distances_raise():
    query, gallery, *labels = make_problem(np.random.default_rng(0), 6, 40, 4, 3)
    gallery = gallery.clone()
    gallery[5] = 3e38  # finite features, float32 distances inf - inf = NaN
    with reidfast.use_backend("triton"), pytest.raises(ValueError, match="NaN"):
        reidfast.evaluate_features(query.to(DEVICE), gallery.to(DEVICE), *labels)


# ---------------------------------------------------------------------------------------------------------
# The counting kernel against reference.rank_count_block, on integer features (exact distances, many ties
# with the pivots), with the label exclusion, CUHK03 groups, an offset block and NaN distances.
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("grouped", [False, True])
def test_rank_count_kernel_matches_reference(dtype, grouped):
    from reidfast.kernels.triton import rank_count

    rng = np.random.default_rng(int(grouped))
    rows, cols, col0, dim = 70, 90, 5, 3  # two row tiles, two column tiles
    num_gallery = col0 + cols + 4
    query = torch.tensor(rng.integers(0, 3, (rows, dim)), dtype=dtype)
    gallery = torch.tensor(rng.integers(0, 3, (cols, dim)), dtype=dtype)
    gallery[7] = 3e38 if dtype == torch.float32 else 1e308  # a column of NaN distances (inf - inf)
    distances = reference_distance.pairwise_distance(query, gallery, "sqeuclidean").numpy()
    offsets, pivot_distance, pivot_index = random_pivots(rng, distances, 6, num_gallery)
    num_groups = 4 if grouped else 1
    groups = rng.integers(0, num_groups, num_gallery).astype(np.int64) if grouped else None
    row_labels = rng.integers(0, 3, rows).astype(np.int64)
    item_labels = rng.integers(0, 3, num_gallery).astype(np.int64)
    kept = distances.copy()
    kept[item_labels[col0 + np.arange(cols)][None, :] == row_labels[:, None]] = np.inf  # never at or before a pivot
    want, _ = reference.rank_count_block(kept, col0, offsets, pivot_distance, pivot_index, groups, num_groups)
    want_nan = int(np.isnan(distances).sum())
    assert want_nan > 0 and want.sum() > 0

    def device(array):
        return None if array is None else torch.from_numpy(array).to(DEVICE)

    histogram = torch.zeros(pivot_index.size * num_groups, dtype=torch.int64, device=DEVICE)
    nan_count = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    search_steps = int(np.diff(offsets).max()).bit_length()
    rank_count.rank_count_block(
        query.to(DEVICE), gallery.to(DEVICE), col0, device(offsets), device(pivot_distance), device(pivot_index).int(),
        device(row_labels), device(item_labels), device(groups), num_groups, histogram, nan_count, "sqeuclidean",
        search_steps,
    )
    np.testing.assert_array_equal(histogram.cpu().numpy(), want)
    assert int(nan_count.item()) == want_nan


def test_rank_count_kernel_rejects_bad_arguments():
    from reidfast.kernels.triton import rank_count

    query, gallery = torch.zeros(2, 3, device=DEVICE), torch.zeros(4, 3, device=DEVICE)
    int64 = lambda *values: torch.tensor(values, dtype=torch.int64, device=DEVICE)  # noqa: E731
    good = dict(pivot_offsets=int64(0, 1, 2), pivot_distance=torch.zeros(2, device=DEVICE), pivot_index=int64(0, 1).int(),
                row_labels=int64(0, 0), item_labels=int64(0, 0, 0, 0), groups=None, num_groups=1,
                histogram=int64(0, 0), nan_count=int64(0))
    call = lambda **kw: rank_count.rank_count_block(query, gallery, 0, **{**good, **kw}, metric="euclidean",  # noqa: E731
                                                    search_steps=1)
    call()
    with pytest.raises(ValueError, match="pivot_offsets: expected length 3"):
        call(pivot_offsets=int64(0, 2))
    with pytest.raises(ValueError, match="pivot_distance: expected torch.float32"):
        call(pivot_distance=torch.zeros(2, dtype=torch.float64, device=DEVICE))
    with pytest.raises(ValueError, match="histogram: expected length 2"):
        call(histogram=int64(0))
    with pytest.raises(ValueError, match="pivot_index: expected int32"):
        call(pivot_index=int64(0, 1))
    with pytest.raises(ValueError, match="row_labels: expected int64"):
        call(row_labels=torch.zeros(2, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="num_groups: expected 1 without groups"):
        call(num_groups=2, histogram=int64(0, 0, 0, 0))


# ---------------------------------------------------------------------------------------------------------
# group=: 2 gloo processes, each with a gallery shard (global gallery indices in the kernel's col0).
# ---------------------------------------------------------------------------------------------------------
SHARDED_CASES = [("uneven", "market1501"), ("rank-0-empty", "cuhk03")]


def _sharded_worker(rank: int, init_file: str, out_dir: str) -> None:
    import datetime
    import os
    import pickle

    import torch.distributed as dist
    from test_evaluate_features_distributed import SHARDS, WORLD_SIZE, run

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=120))
    try:
        outputs = {case: run("triton", case[1], slice(*SHARDS[case[0]][rank]), dist.group.WORLD) for case in SHARDED_CASES}
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as handle:
            pickle.dump(outputs, handle)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(DEVICE != "cpu", reason="gloo with host tensors: the interpreter's case")
def test_gallery_sharded_over_two_processes():
    from conftest import spawn_ranks
    from test_evaluate_features_distributed import WORLD_SIZE, run

    outputs = spawn_ranks(_sharded_worker, WORLD_SIZE)
    for shard, protocol in SHARDED_CASES:
        whole = run("triton", protocol)
        assert whole == dict(run("cpu", protocol), backend="triton")  # integer features: exact distances on both
        for rank in range(WORLD_SIZE):
            assert outputs[rank][shard, protocol] == whole, (rank, shard, protocol)
