"""The cuda backend of reidfast.evaluate_features (csrc/cuda/rank_count.cu: rank counting fused into the CUDA
distance tile): equal, bit for bit, to evaluate(pairwise_distance(...)) with the cuda distance kernel; the
kernel against the counting reference; its argument checks. Without a card the kernels run on CPU tensors in
the CUDA emulator (REIDFAST_EMULATE_CUDA=1, tests/conftest.py): small shapes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import reidfast
from reidfast import _native
from reidfast.reference import evaluate_features as reference

from conftest import device_backend_params
from test_evaluate_features import assert_same, expected, make_problem, quiet, random_pivots

CUDA = device_backend_params(("cuda",))  # cpu-cuda (the emulator) or cuda-cuda (a card), else skipped
SCHEDULES = [("reverse", 0), ("shuffle", 1)]


def to(device, problem):
    query, gallery, *labels = problem
    return (query.to(device), gallery.to(device), *labels)


def cuda_expected(*problem, **kwargs):
    """rf.evaluate on the cuda backend's distance matrix: the floats the fused kernel must rank."""
    return expected(*problem, backend="cuda", **kwargs)


def cuda_features(*args, **kwargs):
    with reidfast.use_backend("cuda"):
        return quiet(reidfast.evaluate_features, *args, **kwargs)


@pytest.mark.parametrize("device,backend", CUDA)
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("protocol", ["market1501", "cuhk03"])
@pytest.mark.parametrize("integer", [False, True], ids=["real", "ties"])
def test_equals_evaluate_of_cuda_pairwise_distance(device, backend, metric, protocol, integer):
    rng = np.random.default_rng(hash((metric, protocol, integer, "cuda")) % 2**32)
    problem = to(device, make_problem(rng, 70, 600, 12, 25, integer=integer))  # two row tiles
    want = cuda_expected(*problem, metric=metric, protocol=protocol, max_rank=20)
    for chunk_size in (None, 97):  # one launch over the gallery; launches of 97 items (partial tiles)
        result = cuda_features(*problem, metric=metric, protocol=protocol, max_rank=20, chunk_size=chunk_size)
        assert_same(result, want)
        assert result.backend == "cuda" and result.protocol == protocol


@pytest.mark.parametrize("device,backend", CUDA)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtypes(device, backend, dtype):
    problem = to(device, make_problem(np.random.default_rng(3), 30, 400, 16, 20, dtype=dtype))
    for protocol in ("market1501", "cuhk03"):
        want = cuda_expected(*problem, protocol=protocol)
        assert_same(cuda_features(*problem, protocol=protocol, chunk_size=64), want)


@pytest.mark.parametrize("device,backend", CUDA)
def test_many_tiles_per_chunk(device, backend):
    """Enough rows that each block walks several gallery tiles (the next tile's slabs prefetched across the
    tile boundary), with a row of x that is not a multiple of 64 and one feature (one slab per tile)."""
    problem = to(device, make_problem(np.random.default_rng(6), 2600, 1950, 1, 40, integer=True))
    assert_same(cuda_features(*problem, metric="sqeuclidean"), cuda_expected(*problem, metric="sqeuclidean"))


@pytest.mark.parametrize("device,backend", CUDA)
def test_equals_reference_on_exact_distances(device, backend):
    """Integer features: every distance is exact, so the whole result equals the reference's."""
    query, gallery, *labels = make_problem(np.random.default_rng(5), 30, 250, 6, 15, integer=True)
    for protocol in ("market1501", "cuhk03"):
        want = quiet(reference.evaluate_features, query, gallery, *labels, metric="sqeuclidean", protocol=protocol)
        result = cuda_features(query.to(device), gallery.to(device), *labels, metric="sqeuclidean",
                               protocol=protocol, chunk_size=50)
        np.testing.assert_array_equal(result.cmc, want.cmc)
        assert (result.mAP, result.mINP) == (want.mAP, want.mINP)


@pytest.mark.parametrize("device,backend", CUDA)
def test_queries_without_matches_junk_and_distractors(device, backend):
    query, gallery, q_pids, g_pids, q_camids, g_camids = make_problem(np.random.default_rng(2), 20, 200, 8, 10)
    q_pids = q_pids.copy()
    q_pids[:3] = 1000  # no gallery item of this pid
    g_camids = g_camids.copy()
    g_camids[g_pids == q_pids[3]] = q_camids[3]  # only same-camera items: all junk for query 3
    problem = to(device, (query, gallery, q_pids, g_pids, q_camids, g_camids))  # g_pids -1 / 0: distractors
    want = cuda_expected(*problem)
    with reidfast.use_backend("cuda"), pytest.warns(UserWarning, match=r"\b\d+ of 20 queries have no valid"):
        result = reidfast.evaluate_features(*problem)
    assert_same(result, want)
    assert result.num_skipped_queries >= 4


@pytest.mark.parametrize("device,backend", CUDA)
def test_same_features_as_query_and_gallery(device, backend):
    query, _, q_pids, _, q_camids, _ = make_problem(np.random.default_rng(4), 60, 1, 8, 6)
    problem = to(device, (query, query, q_pids, q_pids, q_camids, q_camids))
    for chunk_size in (1, 16):
        assert_same(cuda_features(*problem, chunk_size=chunk_size), cuda_expected(*problem))


@pytest.mark.parametrize("device,backend", CUDA)
def test_overflowing_distances_raise(device, backend):
    """float32 distances that overflow to NaN (inf - inf) are counted by the kernel and raise."""
    query, gallery, *labels = make_problem(np.random.default_rng(0), 6, 40, 4, 3)
    gallery = gallery.clone()
    gallery[5] = 3e38
    with reidfast.use_backend("cuda"), pytest.raises(ValueError, match="NaN"):
        reidfast.evaluate_features(query.to(device), gallery.to(device), *labels, max_rank=10)


# ---------------------------------------------------------------------------------------------------------
# The kernel against the counting reference.
# ---------------------------------------------------------------------------------------------------------
def run_kernel(device, query, gallery, first_item, metric, pivots, row_labels=None, item_labels=None, groups=None,
               num_groups=1):
    """The fused kernel's (histogram, NaN count) for query x gallery rows."""
    offsets, pivot_distance, pivot_index = (torch.from_numpy(a).to(device) for a in pivots)
    histogram = torch.zeros(pivot_index.numel() * num_groups, dtype=torch.int64, device=device)
    nan_count = torch.zeros(1, dtype=torch.int64, device=device)
    view = _native.cuda_view
    optional = lambda a: None if a is None else view(torch.from_numpy(a).to(device))  # noqa: E731
    _native.cuda_kernels().rank_count_cuda(
        view(query), view(gallery), first_item, _native.METRIC_CODES[metric], view(offsets), view(pivot_distance),
        view(pivot_index), optional(row_labels), optional(item_labels), optional(groups), num_groups, view(histogram),
        view(nan_count), _native.cuda_stream(query.device),
    )
    return histogram.cpu().numpy(), int(nan_count.item())


@pytest.mark.parametrize("device,backend", CUDA)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("cols", [1, 37, 200])
def test_kernel_matches_counting_reference(device, backend, dtype, grouped, cols):
    rng = np.random.default_rng(cols + 7 * grouped)
    rows, first_item, dim = 70, 5, 3
    num_gallery = first_item + cols + 3
    query = torch.from_numpy(rng.integers(-2, 3, (rows, dim))).to(device, dtype)  # exact distances: many ties
    wide = torch.from_numpy(rng.integers(-2, 3, (cols, dim + 4))).to(device, dtype)
    gallery = wide[:, 1 : 1 + dim]  # a row stride other than the row length
    huge = 3e38 if dtype == torch.float32 else 1e308
    query[7] = huge
    gallery[cols // 2] = huge  # (7, cols // 2) overflows to inf - inf = NaN
    with reidfast.use_backend("cuda"):
        distances = reidfast.pairwise_distance(query, gallery.contiguous(), "sqeuclidean").cpu().numpy()
    # Pivots: half of them at their own item's distance (ties broken by the index), half at small integers.
    offsets, _, pivot_index = random_pivots(rng, distances, 6, num_gallery)
    own_column = np.clip(pivot_index - first_item, 0, cols - 1)
    pivot_distance = np.where(rng.random(pivot_index.size) < 0.5, rng.integers(0, 30, pivot_index.size),
                              distances[np.repeat(np.arange(rows), np.diff(offsets)), own_column])
    pivot_distance = np.nan_to_num(pivot_distance.astype(distances.dtype), nan=1.0)
    order = np.lexsort((pivot_index, pivot_distance, np.repeat(np.arange(rows), np.diff(offsets))))
    pivots = (offsets, pivot_distance[order], pivot_index[order])
    num_groups = 4 if grouped else 1
    groups = rng.integers(0, num_groups, num_gallery).astype(np.int64) if grouped else None

    want, want_nan = reference.rank_count_block(distances, first_item, *pivots, groups, num_groups)
    histogram, nan_count = run_kernel(device, query, gallery, first_item, "sqeuclidean", pivots, groups=groups,
                                      num_groups=num_groups)
    np.testing.assert_array_equal(histogram, want)
    assert nan_count == want_nan and want_nan >= 1

    # The label exclusion: an item of the row's own label is never counted.
    row_labels = rng.integers(0, 3, rows).astype(np.int64)
    item_labels = rng.integers(0, 3, num_gallery).astype(np.int64)
    kept = distances.copy()
    kept[item_labels[first_item + np.arange(cols)][None, :] == row_labels[:, None]] = np.inf
    want_kept, _ = reference.rank_count_block(kept, first_item, *pivots, groups, num_groups)
    histogram, _ = run_kernel(device, query, gallery, first_item, "sqeuclidean", pivots, row_labels, item_labels,
                              groups, num_groups)
    np.testing.assert_array_equal(histogram, want_kept)


@pytest.mark.parametrize("device,backend", CUDA)
def test_kernel_item_indices_past_2_32(device, backend):
    """Gallery indices are 64-bit: ties between items and pivots past 2^32 still go to the smaller index."""
    rng = np.random.default_rng(32)
    rows, cols, first_item = 9, 37, 2**32 + 3
    query = torch.from_numpy(rng.integers(-1, 2, (rows, 2))).to(device, torch.float32)
    gallery = torch.from_numpy(rng.integers(-1, 2, (cols, 2))).to(device, torch.float32)
    with reidfast.use_backend("cuda"):
        distances = reidfast.pairwise_distance(query, gallery, "sqeuclidean").cpu().numpy()
    offsets, _, column = random_pivots(rng, distances, 5, cols)
    pivot_distance = distances[np.repeat(np.arange(rows), np.diff(offsets)), column]  # ties with the items
    pivot_index = first_item + column + rng.integers(-1, 2, column.size)  # before, at or after that item
    order = np.lexsort((pivot_index, pivot_distance, np.repeat(np.arange(rows), np.diff(offsets))))
    pivots = (offsets, pivot_distance[order], pivot_index[order])
    want, _ = reference.rank_count_block(distances, first_item, *pivots)
    histogram, _ = run_kernel(device, query, gallery, first_item, "sqeuclidean", pivots)
    np.testing.assert_array_equal(histogram, want)
    assert want.sum() > 0


@pytest.mark.parametrize("device,backend", CUDA)
def test_kernel_is_schedule_independent(device, backend):
    """Under the emulator: the same histogram whatever order the threads run in (shared-memory races would show)."""
    if not _native.emulating_cuda():
        pytest.skip("the cuda backend runs on a card here, not on the emulator")
    problem = make_problem(np.random.default_rng(12), 70, 300, 10, 12)
    baseline = cuda_features(*problem, protocol="cuhk03", chunk_size=150)
    try:
        for order, seed in SCHEDULES:
            _native._cuda_emulator.set_schedule(order, seed)
            assert_same(cuda_features(*problem, protocol="cuhk03", chunk_size=150), baseline)
    finally:
        _native._cuda_emulator.set_schedule("forward", 0)


@pytest.mark.parametrize("device,backend", CUDA)
def test_kernel_rejects_bad_arguments(device, backend):
    query = torch.zeros(2, 3, device=device)
    gallery = torch.zeros(4, 3, device=device)
    pivots = (np.array([0, 1, 2], dtype=np.int64), np.zeros(2, dtype=np.float32), np.zeros(2, dtype=np.int64))
    cases = {
        "pivot_distance: expected dtype float32": dict(pivots=(pivots[0], pivots[1].astype(np.float64), pivots[2])),
        "pivot_offsets: expected length 3": dict(pivots=(pivots[0][:2], pivots[1], pivots[2])),
        "pivot_index: expected length 2": dict(pivots=(pivots[0], pivots[1], pivots[2][:1])),
        "gallery: expected 3 features per row": dict(gallery=gallery[:, :2].contiguous()),
        "first_item: expected >= 0": dict(first_item=-1),
        "row_labels, item_labels: expected both or neither": dict(row_labels=np.zeros(2, dtype=np.int64)),
        "item_labels: expected at least 5 entries": dict(row_labels=np.zeros(2, dtype=np.int64),
                                                         item_labels=np.zeros(4, dtype=np.int64), first_item=1),
        "groups: expected dtype int64": dict(groups=np.zeros(4, dtype=np.int32), num_groups=1),
        "num_groups: expected 1 without groups": dict(num_groups=2),
    }
    for message, change in cases.items():
        args = dict(query=query, gallery=gallery, first_item=0, metric="euclidean", pivots=pivots)
        args.update(change)
        with pytest.raises(ValueError, match=message):
            run_kernel(device, args.pop("query"), args.pop("gallery"), args.pop("first_item"), args.pop("metric"),
                       args.pop("pivots"), **args)


# ---------------------------------------------------------------------------------------------------------
# group=: two gloo ranks, each with a gallery shard, the counts of the fused kernel all_reduce'd.
# ---------------------------------------------------------------------------------------------------------
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
        outputs = {}
        for name, ranges in SHARDS.items():
            for protocol in ("market1501", "cuhk03"):
                outputs[name, protocol] = run("cuda", protocol, slice(*ranges[rank]), dist.group.WORLD)
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as handle:
            pickle.dump(outputs, handle)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("device,backend", CUDA)
def test_two_gloo_ranks_equal_one_process(device, backend):
    """Host tensors and gloo: on the emulator (on a card the features would have to live on the device)."""
    import torch.distributed as dist

    from conftest import spawn_ranks
    from test_evaluate_features_distributed import SHARDS, WORLD_SIZE, run

    if not _native.emulating_cuda():
        pytest.skip("gloo with host tensors: runs where the cuda backend takes host tensors (the emulator)")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed gloo unavailable")
    per_rank = spawn_ranks(_sharded_worker, WORLD_SIZE)
    for protocol in ("market1501", "cuhk03"):
        want = run("cuda", protocol)
        on_host = run("cpu", protocol)  # integer features: exact distances, so every backend agrees
        assert {**want, "backend": "cpu"} == on_host and want["backend"] == "cuda"
        for name in SHARDS:
            for rank in range(WORLD_SIZE):
                assert per_rank[rank][name, protocol] == want, (name, protocol, rank)
