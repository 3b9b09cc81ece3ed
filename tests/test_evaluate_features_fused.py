"""Rank counting fused into the CPU SIMD distance tile (csrc/cpu/gemm_rank_count.cpp): the same histogram as
counting a stored block of the same kernel's distances (the two-step path, rank_count_block) and as the
reference on pairwise_distance's floats; the re-ranked score transform against numpy; evaluate_features with
the fused and the two-step pass. Each micro-kernel this CPU lacks (AVX-512 here on an AVX2 machine) is skipped."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import reidfast
from reidfast import _native
from reidfast.ops import evaluate_features as evaluate_features_op
from reidfast.ops.distance import _GEMM_KERNEL_CODES, fused_cpu_kernels
from reidfast.reference import evaluate_features as reference

NATIVE = reidfast.backends()["cpu"].available
pytestmark = pytest.mark.skipif(not NATIVE, reason="native CPU backend not built")
KERNELS = [
    pytest.param(name, marks=pytest.mark.skipif(
        not NATIVE or name not in fused_cpu_kernels(), reason=f"this CPU or build has no {name} micro-kernel"))
    for name in ("avx512", "avx2")
]
METRICS = {"euclidean": 0, "sqeuclidean": 1, "cosine": 2}


def view(array):
    return _native.view(torch.from_numpy(np.ascontiguousarray(array)) if isinstance(array, np.ndarray) else array)


def distances_of(kernel, x, y, metric):
    """The fused kernel's distances x -> y (what pairwise_distance's cpu backend returns with this kernel)."""
    out = torch.empty(x.shape[0], y.shape[0])
    _native._C.fused_pairwise_distance_cpu(view(x), view(y), METRICS[metric], False, view(out), _GEMM_KERNEL_CODES[kernel])
    return out.numpy()


def features(rng, rows, cols, dim, dtype=torch.float32):
    """Random features with exact duplicates (gallery rows repeated, a query equal to a gallery row): ties."""
    x = torch.from_numpy(rng.normal(size=(rows, dim)).astype(np.float32))
    y = torch.from_numpy(rng.normal(size=(cols, dim)).astype(np.float32))
    if cols >= 8:
        y[cols // 2 : cols // 2 + 4] = y[:4]
        x[0] = y[1]
    return x.to(dtype), y.to(dtype)


def item_pivots(rng, values, max_pivots, item0):
    """Per row, up to max_pivots of its own items as pivots, at exactly their values (NaN items excluded), sorted
    by (value, index): a distance off by one ulp in the fused path moves that item across its own pivot."""
    rows, cols = values.shape
    offsets, pivot_value, pivot_index = [0], [], []
    for r in range(rows):
        finite = np.flatnonzero(~np.isnan(values[r]))
        chosen = rng.choice(finite, min(finite.size, int(rng.integers(0, max_pivots + 1))), replace=False)
        order = np.lexsort((chosen, values[r, chosen]))
        pivot_value.append(values[r, chosen[order]])
        pivot_index.append(item0 + chosen[order])
        offsets.append(offsets[-1] + chosen.size)
    return (np.array(offsets, np.int64), np.concatenate(pivot_value).astype(np.float32),
            np.concatenate(pivot_index).astype(np.int64))


def fused_count(kernel, x, y, metric, item0, pivots, num_groups=1, groups=None, labels=None, transform=None):
    offsets, pivot_value, pivot_index = pivots
    histogram = np.zeros(pivot_index.size * num_groups, np.int64)
    row_labels, item_labels = (None, None) if labels is None else (view(labels[0]), view(labels[1]))
    row_max, keep, blend = transform if transform is not None else (None, 0.0, 1.0)
    nan_count = _native._C.fused_rank_count_cpu(
        view(x), view(y), METRICS[metric], item0, view(offsets), view(pivot_value), view(pivot_index), row_labels,
        item_labels, None if groups is None else view(groups), num_groups, view(histogram),
        row_max=None if row_max is None else view(row_max), keep=keep, blend=blend, kernel=_GEMM_KERNEL_CODES[kernel],
    )
    return histogram, nan_count


def two_step_count(values, item0, pivots, num_groups=1, groups=None, labels=None):
    offsets, pivot_value, pivot_index = pivots
    histogram = np.zeros(pivot_index.size * num_groups, np.int64)
    row_labels, item_labels = (None, None) if labels is None else (view(labels[0]), view(labels[1]))
    nan_count = _native._C.rank_count_block_cpu(
        view(values), item0, view(offsets), view(pivot_value), view(pivot_index), row_labels, item_labels,
        None if groups is None else view(groups), num_groups, view(histogram),
    )
    return histogram, nan_count


# Rows: 1 and 3 (fewer tiles than threads: the columns split into parts, each with its own histogram), 41;
# columns across several L2 blocks at D = 67 and a depth split at D = 600.
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("metric", list(METRICS))
@pytest.mark.parametrize("rows,cols,dim", [(1, 700, 67), (3, 1500, 16), (41, 900, 67), (13, 130, 600)])
def test_fused_count_equals_two_step_and_reference(kernel, metric, rows, cols, dim):
    rng = np.random.default_rng(rows * cols + dim)
    x, y = features(rng, rows, cols, dim)
    y[7] = 3e38  # euclidean / sqeuclidean distances overflow: inf - inf = NaN, counted apart
    item0, num_gallery = 11, 11 + cols + 5
    values = distances_of(kernel, x, y, metric)
    pivots = item_pivots(rng, values, 7, item0)
    groups = rng.integers(0, 3, num_gallery).astype(np.int64)
    labels = rng.integers(0, 4, rows).astype(np.int64), rng.integers(0, 4, num_gallery).astype(np.int64)
    for group_args in ((1, None), (3, groups)):
        want, want_nan = reference.rank_count_block(values, item0, *pivots, group_args[1], group_args[0])
        got, nan = fused_count(kernel, x, y, metric, item0, pivots, *group_args)
        np.testing.assert_array_equal(got, want)
        assert nan == want_nan
        np.testing.assert_array_equal(got, two_step_count(values, item0, pivots, *group_args)[0])
    kept = values.copy()  # the label exclusion: items of the row's own label never rank before a pivot
    kept[labels[1][item0 + np.arange(cols)][None, :] == labels[0][:, None]] = np.inf
    got, _ = fused_count(kernel, x, y, metric, item0, pivots, 3, groups, labels)
    np.testing.assert_array_equal(got, reference.rank_count_block(kept, item0, *pivots, groups, 3)[0])
    np.testing.assert_array_equal(got, two_step_count(values, item0, pivots, 3, groups, labels)[0])


@pytest.mark.parametrize("kernel", KERNELS)
def test_fused_distances_are_pairwise_distance_bitwise(kernel, monkeypatch):
    """Pivots at pairwise_distance's own floats, one ulp above and one below: the counts at each match the
    reference only if the fused tile compares exactly those floats."""
    monkeypatch.setenv("REIDFAST_CPU_GEMM", kernel)
    rng = np.random.default_rng(5)
    x, y = features(rng, 9, 300, 33)
    values = reidfast.pairwise_distance(x, y).numpy()
    for shift in (0, np.inf, -np.inf):
        shifted = np.nextafter(values, np.float32(shift)).astype(np.float32) if shift else values
        pivots = item_pivots(np.random.default_rng(1), shifted, 6, 0)
        got, _ = fused_count(kernel, x, y, "euclidean", 0, pivots)
        np.testing.assert_array_equal(got, reference.rank_count_block(values, 0, *pivots)[0])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(kernel, dtype):
    rng = np.random.default_rng(2)
    x, y = features(rng, 10, 260, 24, dtype)
    values = distances_of(kernel, x, y, "euclidean")
    pivots = item_pivots(rng, values, 5, 0)
    np.testing.assert_array_equal(fused_count(kernel, x, y, "euclidean", 0, pivots)[0],
                                  reference.rank_count_block(values, 0, *pivots)[0])


def rerank_scores(values, row_max, keep, blend):
    """keep + (float32(d * d) / row_max[r]) * blend, float32 numpy operations one at a time (no contraction)."""
    with np.errstate(all="ignore"):
        squared = (values * values).astype(np.float32)
        scaled = (squared / row_max[:, None]).astype(np.float32)
        return (np.float32(keep) + (scaled * np.float32(blend)).astype(np.float32)).astype(np.float32)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("lambda_value", [0.0, 0.3, 1.0])
def test_rerank_transform_against_numpy(kernel, metric, lambda_value):
    """The compared value keep + (float32(d*d) / row_max[r]) * blend, pivots being such scores (an item's own,
    or an explicit score of an overlapping item that f(d) does not produce)."""
    rng = np.random.default_rng(int(lambda_value * 10) + len(metric))
    x, y = features(rng, 14, 500, 20)
    values = distances_of(kernel, x, y, metric)
    row_max = (values * values).max(1).astype(np.float32)
    row_max[3] = np.float32(0.7) * row_max[3]  # scores above keep + blend too
    keep, blend = np.float32(1 - lambda_value), np.float32(lambda_value)
    scores = rerank_scores(values, row_max, keep, blend)
    offsets, pivot_value, pivot_index = item_pivots(rng, scores, 6, 0)
    explicit = rng.random(pivot_value.size) < 0.3  # overlap items: scores below their f(d)
    pivot_value[explicit] = (pivot_value[explicit] * np.float32(0.9)).astype(np.float32)
    for r in range(offsets.size - 1):
        part = slice(offsets[r], offsets[r + 1])
        order = np.lexsort((pivot_index[part], pivot_value[part]))
        pivot_value[part], pivot_index[part] = pivot_value[part][order], pivot_index[part][order]
    pivots = offsets, pivot_value, pivot_index
    got, nan = fused_count(kernel, x, y, metric, 0, pivots, transform=(row_max, keep, blend))
    want, want_nan = reference.rank_count_block(scores, 0, *pivots)
    np.testing.assert_array_equal(got, want)
    assert nan == want_nan
    two_step = np.zeros_like(got)  # the two-step kernel with the same transform: the same histogram
    _native._C.rank_count_block_cpu(view(values), 0, view(offsets), view(pivot_value), view(pivot_index), None,
                                    None, None, 1, view(two_step), view(row_max), keep, blend)
    np.testing.assert_array_equal(got, two_step)


def test_rejects_bad_arguments():
    kernel = fused_cpu_kernels()[0] if fused_cpu_kernels() else pytest.skip("no fused micro-kernel")
    x, y = features(np.random.default_rng(0), 2, 5, 4)
    pivots = np.array([0, 1, 2], np.int64), np.zeros(2, np.float32), np.zeros(2, np.int64)
    with pytest.raises(ValueError, match="pivot_distance: expected dtype float32"):
        fused_count(kernel, x, y, "euclidean", 0, (pivots[0], pivots[1].astype(np.float64), pivots[2]))
    with pytest.raises(ValueError, match="pivot_offsets"):
        fused_count(kernel, x, y, "euclidean", 0, (np.array([0, 1, 5], np.int64), *pivots[1:]))
    with pytest.raises(ValueError, match="row_max"):
        fused_count(kernel, x, y, "euclidean", 0, pivots, transform=(np.ones(3, np.float32), 0.5, 0.5))
    with pytest.raises(ValueError, match="item_labels"):
        fused_count(kernel, x, y, "euclidean", 3, pivots, labels=(np.zeros(2, np.int64), np.zeros(5, np.int64)))
    with pytest.raises(ValueError, match="y: expected as many features as x"):
        fused_count(kernel, x, y[:, :3].contiguous(), "euclidean", 0, pivots)


@pytest.mark.skipif(not NATIVE or not fused_cpu_kernels(), reason="no fused micro-kernel")
@pytest.mark.parametrize("metric", list(METRICS))
@pytest.mark.parametrize("protocol", ["market1501", "cuhk03"])
def test_evaluate_features_fused_equals_two_step(metric, protocol, monkeypatch):
    rng = np.random.default_rng(len(metric) + len(protocol))
    num_query, num_gallery, num_ids = 45, 700, 30
    centres = rng.normal(size=(num_ids, 16))
    q_pids, g_pids = rng.integers(1, num_ids, num_query), rng.integers(-1, num_ids, num_gallery)
    query = torch.tensor(np.round(centres[q_pids] + rng.normal(size=(num_query, 16))), dtype=torch.float32)  # ties
    gallery = torch.tensor(np.round(centres[np.maximum(g_pids, 0)] + rng.normal(size=(num_gallery, 16))), dtype=torch.float32)
    labels = q_pids, g_pids, rng.integers(0, 3, num_query), rng.integers(0, 3, num_gallery)
    results = {}
    for fused in (True, False):
        monkeypatch.setattr(evaluate_features_op._HostPass, "fused_counting", fused)
        with reidfast.use_backend("cpu"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results[fused] = [reidfast.evaluate_features(query, gallery, *labels, metric=metric, protocol=protocol,
                                                         chunk_size=chunk) for chunk in (None, 97)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = reidfast.evaluate(reidfast.pairwise_distance(query, gallery, metric), *labels, protocol=protocol)
    for result in results[True] + results[False]:
        np.testing.assert_array_equal(result.cmc, want.cmc)
        assert (result.mAP, result.mINP, result.num_valid_queries) == (want.mAP, want.mINP, want.num_valid_queries)


@pytest.mark.skipif(not NATIVE or not fused_cpu_kernels(), reason="no fused micro-kernel")
def test_automatic_choice_counts_in_the_tile_only_while_few_items_precede_the_farthest_match(monkeypatch):
    """fused_counting None: the fraction of sampled gallery items at or before each row's farthest match picks
    fused (below FUSED_MAX_SURVIVORS) or two-pass counting; a forced value wins."""
    generator = torch.Generator().manual_seed(0)
    num_gallery = 8 * evaluate_features_op.SURVIVOR_SAMPLE
    query, gallery = torch.randn(6, 8, generator=generator), torch.randn(num_gallery, 8, generator=generator)
    labels = np.arange(6), np.full(num_gallery, -1), np.zeros(6, np.int64), np.ones(num_gallery, np.int64)
    inputs = evaluate_features_op._validate(query, gallery, *labels, "euclidean", 10, None)
    host = evaluate_features_op._HostPass(inputs)
    offsets = np.arange(7, dtype=np.int64)  # one pivot per row
    distances = host.distances(query, gallery).numpy()
    for quantile, fused in ((0.01, True), (0.5, False)):
        farthest = np.quantile(distances, quantile, axis=1).astype(np.float32)
        assert host._counts_in_tile(query, offsets, farthest) is fused
        for forced in (True, False):
            monkeypatch.setattr(evaluate_features_op._HostPass, "fused_counting", forced)
            assert host._counts_in_tile(query, offsets, farthest) is forced
        monkeypatch.setattr(evaluate_features_op._HostPass, "fused_counting", None)
    small = evaluate_features_op._HostPass(evaluate_features_op._validate(query, gallery[:100], *labels[:1],
                                                                          labels[1][:100], labels[2], labels[3][:100],
                                                                          "euclidean", 10, None))
    assert small._counts_in_tile(query, offsets, np.full(6, np.inf, np.float32))  # small galleries: fused


_THREADS_SCRIPT = """
import os, sys, numpy as np, torch
from test_evaluate_features_fused import threads_problem, fused_count
if os.environ.get("REIDFAST_TEST_SET_THREADS"):  # more than OMP_THREAD_LIMIT allows: a short team
    torch.set_num_threads(int(os.environ["REIDFAST_TEST_SET_THREADS"]))
kernel, rows, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
x, y, values, pivots, groups = threads_problem(kernel, rows)
np.save(path, fused_count(kernel, x, y, "euclidean", 4, pivots, 3, groups)[0])
"""


def threads_problem(kernel, rows):
    """Few rows against 5,000 items: with 5 threads the columns split into parts, each with its own histogram."""
    rng = np.random.default_rng(rows)
    x, y = features(rng, rows, 5000, 24)
    values = distances_of(kernel, x, y, "euclidean")
    return x, y, values, item_pivots(rng, values, 9, 4), rng.integers(0, 3, 5010).astype(np.int64)


@pytest.mark.parametrize("kernel", KERNELS)
def test_column_parts_and_short_teams_count_the_same(kernel, tmp_path):
    """1 thread (no split), 5 threads (1 or 2 tiles split into 5 or 2 column parts, merged at the end), and a team
    smaller than planned (torch.set_num_threads(4) under OMP_THREAD_LIMIT=2: the call reruns on one thread)."""
    import os
    import subprocess
    import sys

    tests_dir = os.path.dirname(os.path.abspath(__file__))
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(reidfast.__file__)))  # the reidfast under test
    python_path = os.pathsep.join(filter(None, [package_root, tests_dir, os.environ.get("PYTHONPATH")]))
    for rows in (1, 9):
        _, _, values, pivots, groups = threads_problem(kernel, rows)
        want = reference.rank_count_block(values, 4, *pivots, groups, 3)[0]
        for extra in ({"OMP_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "5"},
                      {"OMP_THREAD_LIMIT": "2", "REIDFAST_TEST_SET_THREADS": "4"}):
            path = tmp_path / f"{rows}_{len(extra)}_{extra.get('OMP_NUM_THREADS', 'short')}.npy"
            subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, kernel, str(rows), str(path)],
                           env=dict(os.environ, PYTHONPATH=python_path, **extra), check=True, cwd=tests_dir)
            np.testing.assert_array_equal(np.load(path), want, err_msg=f"rows {rows}, {extra}")
