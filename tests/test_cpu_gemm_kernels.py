"""The CPU backend's product paths, each forced with REIDFAST_CPU_GEMM: the fused AVX-512 and AVX2 micro-kernels
(csrc/cpu/gemm_kernels.h) and the BLAS path, against the reference, over shapes that are not multiples of
any tile, every metric, half-precision inputs, exact ties, exclude_self, NaN and batch-hard mining. A kernel
this machine cannot run is skipped here, so a CPU without AVX-512 still tests the AVX2 and BLAS paths."""
from __future__ import annotations

import math

import pytest
import torch

import reidfast
from reidfast._dispatch import BackendUnavailableError
from reidfast.ops import distance as distance_ops
from reidfast.ops.distance import CPU_GEMM_ENV, fused_cpu_kernels
from reidfast.reference.distance import METRICS, pairwise_distance as reference_distance
from reidfast.reference.distance import topk_distance as reference_topk

from test_distance import assert_close, assert_distance_close
from test_topk import check_against_reference
from test_triplet import compare_with_reference, labels_for

pytestmark = pytest.mark.skipif(not reidfast.backends()["cpu"].available, reason="native CPU backend not built")

VARIANTS = [
    pytest.param(name, marks=pytest.mark.skipif(
        name != "blas" and name not in fused_cpu_kernels(), reason=f"this CPU or build has no {name} micro-kernel"))
    for name in ("avx512", "avx2", "blas")
]
# Tiles are 8 x 32 (AVX-512) and 6 x 16 (AVX2); depth is split in chunks above 512; y is packed in blocks of
# 512 KiB (several blocks from about 500 columns at D = 257): none of these is a multiple of anything.
SHAPES = [(1, 1, 1), (7, 13, 5), (33, 65, 17), (1000, 999, 257), (21, 70, 1100)]
HALF = [torch.float16, torch.bfloat16]


@pytest.fixture(params=VARIANTS)
def variant(request, monkeypatch):
    monkeypatch.setenv(CPU_GEMM_ENV, request.param)
    with reidfast.use_backend("cpu"):
        yield request.param


def _pair(n, m, dim, dtype=torch.float32, duplicate=True):
    generator = torch.Generator().manual_seed(n + m + dim)
    x = torch.randn(n, dim, generator=generator)
    y = torch.randn(m, dim, generator=generator)
    if duplicate and n > 1 and m > 1:
        y[1] = x[0]  # an exact duplicate: the euclidean clamp (float32 cancellation: compared as squares)
    return x.to(dtype), y.to(dtype)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32] + HALF, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_pairwise_distance(variant, metric, dtype, shape):
    x, y = _pair(*shape, dtype=dtype)
    out = reidfast.pairwise_distance(x, y, metric=metric)
    assert out.dtype == torch.float32 and out.shape == shape[:2]
    assert_distance_close(out, reference_distance(x, y, metric), metric, x, y)


@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_distance_self_is_exact(variant, metric):
    x, _ = _pair(45, 1, 70)
    out = reidfast.pairwise_distance(x, metric=metric)
    if metric == "euclidean":  # the square root of the clamp, exactly
        assert torch.equal(out.diagonal(), torch.full((45,), 1e-12).sqrt())
    elif metric == "sqeuclidean":
        assert torch.equal(out.diagonal(), torch.zeros(45))
    assert_distance_close(out, reference_distance(x, x, metric), metric, x)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_topk(variant, metric, shape):
    n, m, _ = shape
    x, y = _pair(*shape)
    for k in sorted({1, min(7, m), min(20, m), m}):
        check_against_reference("cpu", x, y, k, metric, atol=1e-3)


@pytest.mark.parametrize("metric", METRICS)
def test_topk_exclude_self(variant, metric):
    x, _ = _pair(300, 1, 40)  # several panels and tiles; the diagonal crosses tile and panel borders
    for k in (1, 13, 299):
        check_against_reference("cpu", x, None, k, metric, exclude_self=True, atol=1e-3)
    values, indices = reidfast.topk_distance(x, k=1, metric="sqeuclidean")
    assert torch.equal(indices[:, 0], torch.arange(300)) and torch.equal(values[:, 0], torch.zeros(300))


@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean"])
def test_topk_exact_ties_go_to_the_smaller_index(variant, metric):
    # Small integers: every dot product is exact, so many distances tie exactly, including whole duplicate
    # rows across panel borders (columns 31/32/33, 64...). Not cosine: its normalisation rounds differently
    # in every implementation, so its ties are not exact anywhere.
    generator = torch.Generator().manual_seed(3)
    x = torch.randint(-2, 3, (37, 4), generator=generator).float()
    y = torch.randint(-2, 3, (130, 4), generator=generator).float()
    y[32] = y[31]
    y[33] = y[31]
    y[64] = y[0]
    for k in (1, 9, 40, 130):
        values, indices = reidfast.topk_distance(x, y, k=k, metric=metric)
        ref_values, ref_indices = reference_topk(x, y, k, metric)
        assert torch.equal(indices, ref_indices)
        assert_close(values, ref_values, atol=1e-6)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_topk_half_precision_strided(variant, dtype):
    generator = torch.Generator().manual_seed(4)
    base = torch.randn(160, 90, generator=generator).to(dtype)
    x, y = base[::3, ::2], base[1:, 1::2]  # strided rows and features
    values, _ = check_against_reference("cpu", x, y, 11, "euclidean", atol=1e-3)
    assert values.dtype == torch.float32


def test_nan_ranks_last_and_ties_by_index(variant):
    x, y = _pair(6, 40, 4, duplicate=False)
    y[[3, 7, 8, 30]] = float("nan")
    x[2] = float("nan")
    values, indices = reidfast.topk_distance(x, y, k=38, allow_nonfinite=True)
    ref_values, ref_indices = reference_topk(x, y, 38, "euclidean")
    assert torch.equal(indices, ref_indices)
    assert torch.allclose(values, ref_values, equal_nan=True, atol=1e-5)
    distances = reidfast.pairwise_distance(x, y, allow_nonfinite=True)
    assert torch.equal(distances.isnan(), reference_distance(x, y).isnan())


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("label_kind", ["pk", "unbalanced"])
@pytest.mark.parametrize("batch,dim", [(1, 3), (7, 5), (33, 17), (257, 64), (96, 1100)], ids=str)
def test_batch_hard_mining(variant, metric, label_kind, batch, dim):
    generator = torch.Generator().manual_seed(batch + dim)
    embeddings = torch.randn(batch, dim, generator=generator)
    labels = labels_for(batch, label_kind, generator)
    compare_with_reference("cpu", embeddings, labels, atol=2e-4 * max(1.0, dim / 256), metric=metric)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_batch_hard_half_precision(variant, dtype):
    generator = torch.Generator().manual_seed(6)
    embeddings = torch.randn(70, 40, generator=generator).to(dtype)
    labels = torch.arange(70) // 5
    compare_with_reference("cpu", embeddings, labels, atol=2e-4)


def test_batch_hard_exact_ties_and_candidates(variant):
    generator = torch.Generator().manual_seed(7)
    embeddings = torch.randint(-2, 3, (70, 3), generator=generator).float()
    labels = torch.arange(70) % 6 * 1000003  # large label values: compared for equality only
    for metric in ("sqeuclidean", "euclidean"):
        details, ref = compare_with_reference("cpu", embeddings, labels, atol=1e-5, metric=metric)
        assert torch.equal(details.hardest_positive, ref.hardest_positive)
        assert torch.equal(details.hardest_negative, ref.hardest_negative)
    memory = torch.randint(-2, 3, (90, 3), generator=generator).float()
    memory_labels = torch.arange(90) % 7
    memory[:20], memory_labels[:20] = embeddings[:20], labels[:20] % 7
    anchor_index = torch.full((70,), -1)
    anchor_index[:20] = torch.arange(20)
    details, ref = compare_with_reference(
        "cpu", embeddings, labels % 7, atol=1e-5, candidates=memory, candidate_labels=memory_labels,
        anchor_index=anchor_index,
    )
    assert torch.equal(details.hardest_positive, ref.hardest_positive)
    assert torch.equal(details.hardest_negative, ref.hardest_negative)


@pytest.mark.parametrize("batch,dim", [(5, 3), (50, 17), (130, 64), (300, 600)], ids=str)
def test_batch_hard_symmetric_half_product_is_bitwise_the_full_one(variant, batch, dim):
    # The batch against itself takes the half product (tiles below the diagonal skipped, each tile's update
    # mirrored, csrc/cpu/gemm_kernels.cpp); a copy of the batch as candidates takes the full one. Each dot
    # product is the same sum either way, so every output agrees to the bit, exact ties included.
    generator = torch.Generator().manual_seed(batch + dim)
    for embeddings in (torch.randn(batch, dim, generator=generator),
                       torch.randint(-2, 3, (batch, dim), generator=generator).float()):
        labels = torch.randint(0, max(1, batch // 4), (batch,), generator=generator)
        for metric in METRICS:
            _, half = reidfast.batch_hard_triplet_loss(embeddings, labels, metric=metric, return_details=True)
            _, full = reidfast.batch_hard_triplet_loss(
                embeddings, labels, metric=metric, candidates=embeddings.clone(), candidate_labels=labels,
                anchor_index=torch.arange(batch), return_details=True)
            for name in ("dist_ap", "dist_an", "hardest_positive", "hardest_negative"):
                assert torch.equal(getattr(half, name), getattr(full, name)), (metric, name)


def test_several_passes_and_super_blocks():
    # More x rows than one pass packs (16 MiB over all threads), and more y rows than one shared super-block
    # holds (32 MiB): the paths with repacking and a barrier between super-blocks.
    name = (fused_cpu_kernels() or ("blas",))[0]
    if name == "blas":
        pytest.skip("no fused micro-kernel on this machine")
    many_x, few_y = _pair(2100, 45, 2048, duplicate=False)
    few_x, many_y = _pair(20, 4200, 2048, duplicate=False)
    with pytest.MonkeyPatch.context() as patch, reidfast.use_backend("cpu"):
        patch.setenv(CPU_GEMM_ENV, name)
        check_against_reference("cpu", many_x, few_y, 5, "euclidean", atol=2e-3)
        check_against_reference("cpu", few_x, many_y, 50, "sqeuclidean", atol=2e-1)
        out = reidfast.pairwise_distance(few_x, many_y, metric="cosine")
    assert_close(out, reference_distance(few_x, many_y, "cosine"), atol=1e-4)


def test_bad_or_unavailable_kernel_is_reported(monkeypatch):
    x = torch.randn(5, 3)
    monkeypatch.setenv(CPU_GEMM_ENV, "sse9")
    with reidfast.use_backend("cpu"), pytest.raises(ValueError, match=f"{CPU_GEMM_ENV}: expected one of"):
        reidfast.topk_distance(x, k=2)
    # As on a CPU with AVX2 only: forcing AVX-512 says so and "auto" takes AVX2; with neither, "auto" takes
    # the BLAS path; float64 takes it whatever is set.
    monkeypatch.setattr(distance_ops, "fused_cpu_kernels", lambda: ("avx2",))
    monkeypatch.setenv(CPU_GEMM_ENV, "avx512")
    with reidfast.use_backend("cpu"), pytest.raises(BackendUnavailableError, match="cannot run that micro-kernel"):
        reidfast.pairwise_distance(x)
    assert distance_ops.cpu_gemm_kernel(torch.float64) is None
    monkeypatch.setenv(CPU_GEMM_ENV, "auto")
    assert distance_ops.cpu_gemm_kernel(torch.float16) == distance_ops.cpu_gemm_kernel(torch.float32) == 1
    monkeypatch.setattr(distance_ops, "fused_cpu_kernels", lambda: ())
    assert distance_ops.cpu_gemm_kernel(torch.float32) is None


def test_fused_kernels_report():
    kernels = fused_cpu_kernels()
    assert set(kernels) <= {"avx512", "avx2"}
    assert list(kernels) == sorted(kernels, key=["avx512", "avx2"].index)  # widest first: what "auto" runs


# --- few rows, many columns: the columns split over the threads ---------------------------------------
# With fewer MR-row tiles than threads, each tile's columns are shared by several threads, each with its own
# top-k reservoir / hardest pair, merged at the end (csrc/cpu/gemm_kernels.cpp, plan_split). Parts of at
# least 256 columns: M = 1 and 33 keep one part, 5000 and 40000 are split (M = 40000 at D = 256 also spans
# two packed super-blocks, each split separately).
FEW_ROWS = [1, 2, 7]
MANY_COLUMNS = [1, 33, 5000, 40000]
FEW_ROW_DEPTHS = [1, 17, 256]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dim", FEW_ROW_DEPTHS)
@pytest.mark.parametrize("m", MANY_COLUMNS)
@pytest.mark.parametrize("n", FEW_ROWS)
def test_few_rows_distance_and_topk(variant, metric, n, m, dim):
    x, y = _pair(n, m, dim)
    assert_distance_close(reidfast.pairwise_distance(x, y, metric=metric), reference_distance(x, y, metric), metric, x, y)
    for k in sorted({1, min(20, m), min(m, 300)}):
        check_against_reference("cpu", x, y, k, metric, atol=1e-3 * math.sqrt(dim))


@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean"])
@pytest.mark.parametrize("n", FEW_ROWS)
@pytest.mark.parametrize("m", [33, 5000, 40000])
def test_few_rows_exact_ties_go_to_the_smaller_index(variant, metric, n, m):
    # Small integers in 2 features: few distinct distances, so every k-th neighbour ties with columns in
    # every part; duplicates of the first columns are planted in the last part.
    generator = torch.Generator().manual_seed(n * m)
    x = torch.randint(-2, 3, (n, 2), generator=generator).float()
    y = torch.randint(-2, 3, (m, 2), generator=generator).float()
    y[-3:] = y[:3]
    for k in sorted({1, 9, min(m, 200)}):
        values, indices = reidfast.topk_distance(x, y, k=k, metric=metric)
        ref_values, ref_indices = reference_topk(x, y, k, metric)
        assert torch.equal(indices, ref_indices)
        assert_close(values, ref_values, atol=1e-6)


@pytest.mark.parametrize("m", [40, 5000])
def test_few_rows_nan_ranks_last_and_ties_by_index(variant, m):
    # Small integers: exact distances, so the whole ranking is defined (ties to the smaller index).
    generator = torch.Generator().manual_seed(m)
    x = torch.randint(-3, 4, (2, 4), generator=generator).float()
    y = torch.randint(-3, 4, (m, 4), generator=generator).float()
    y[[3, 7, m // 2, m - 1]] = float("nan")
    x[1] = float("nan")
    values, indices = reidfast.topk_distance(x, y, k=m - 2, allow_nonfinite=True)
    ref_values, ref_indices = reference_topk(x, y, m - 2, "euclidean")
    assert torch.equal(indices, ref_indices)
    assert torch.allclose(values, ref_values, equal_nan=True, atol=1e-5)
    distances = reidfast.pairwise_distance(x, y, allow_nonfinite=True)
    assert torch.equal(distances.isnan(), reference_distance(x, y).isnan())


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("n", FEW_ROWS)
def test_few_rows_half_precision(variant, dtype, n):
    x, y = _pair(n, 5000, 17, dtype=dtype)
    assert_close(reidfast.pairwise_distance(x, y, metric="cosine"), reference_distance(x, y, "cosine"), atol=1e-4)
    values, _ = check_against_reference("cpu", x, y, 20, "euclidean", atol=1e-3)
    assert values.dtype == torch.float32


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("m", [33, 5000, 40000])
@pytest.mark.parametrize("n", FEW_ROWS)
def test_few_rows_batch_hard_mining(variant, metric, n, m):
    # A few anchors against a large memory bank, the anchors' own rows in it (anchor_index).
    generator = torch.Generator().manual_seed(n + m)
    memory = torch.randn(m, 17, generator=generator)
    memory_labels = torch.randint(0, 5, (m,), generator=generator)
    anchor_index = torch.arange(n) * (m // n)
    details, ref = compare_with_reference(
        "cpu", memory[anchor_index], memory_labels[anchor_index], atol=2e-4, metric=metric, candidates=memory,
        candidate_labels=memory_labels, anchor_index=anchor_index,
    )


@pytest.mark.parametrize("n", FEW_ROWS)
@pytest.mark.parametrize("m", [33, 5000, 40000])
def test_few_rows_batch_hard_exact_ties(variant, n, m):
    generator = torch.Generator().manual_seed(n + 2 * m)
    memory = torch.randint(-2, 3, (m, 2), generator=generator).float()
    memory_labels = torch.randint(0, 3, (m,), generator=generator)
    anchors = torch.randint(-2, 3, (n, 2), generator=generator).float()
    anchor_labels = torch.randint(0, 3, (n,), generator=generator)
    for metric in ("sqeuclidean", "euclidean"):
        details, ref = compare_with_reference(
            "cpu", anchors, anchor_labels, atol=1e-5, metric=metric, candidates=memory,
            candidate_labels=memory_labels, anchor_index=torch.full((n,), -1),
        )
        assert torch.equal(details.hardest_positive, ref.hardest_positive)
        assert torch.equal(details.hardest_negative, ref.hardest_negative)


_THREADS_SCRIPT = """
import os, sys, torch, reidfast
from test_cpu_gemm_kernels import _pair
if os.environ.get("REIDFAST_TEST_SET_THREADS"):  # more than OMP_THREAD_LIMIT allows: a short team
    torch.set_num_threads(int(os.environ["REIDFAST_TEST_SET_THREADS"]))
n, m, dim, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
x, y = _pair(n, m, dim)
generator = torch.Generator().manual_seed(m)
x_small = torch.randint(-2, 3, (n, 3), generator=generator).float()  # exact distances: many exact ties
y_small = torch.randint(-2, 3, (m, 3), generator=generator).float()
labels = torch.arange(m) % 7
with reidfast.use_backend("cpu"):
    outputs = {"distance": reidfast.pairwise_distance(x, y, metric="euclidean")}
    for metric in ("euclidean", "cosine", "ties"):
        if metric == "ties":
            x, y, metric = x_small, y_small, "sqeuclidean"
        outputs["topk_" + metric] = reidfast.topk_distance(x, y, k=50, metric=metric)
        _, details = reidfast.batch_hard_triplet_loss(
            x, labels[:n], candidates=y, candidate_labels=labels, anchor_index=torch.full((n,), -1),
            metric=metric, return_details=True)
        outputs["mine_" + metric] = (details.dist_ap, details.dist_an, details.hardest_positive,
                                     details.hardest_negative)
torch.save(outputs, path)
"""


@pytest.mark.parametrize("variant_name", ["avx512", "avx2"])
def test_column_split_is_bitwise_identical_to_one_thread(variant_name, tmp_path):
    # One thread is the unsplit path; 5 threads split 1 or 2 tiles into 5 or 2 column parts (also more
    # threads than this machine has cores, and 2 x 2 grids). Same arithmetic per element, same tie rule:
    # identical bits.
    import os
    import subprocess
    import sys

    if variant_name not in fused_cpu_kernels():
        pytest.skip(f"this CPU or build has no {variant_name} micro-kernel")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    for n in (1, 9):
        results = []
        for threads in (1, 5):
            path = tmp_path / f"{n}_{threads}.pt"
            python_path = os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")]))
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=python_path, **{CPU_GEMM_ENV: variant_name})
            subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, str(n), "40000", "40", str(path)], env=env,
                           check=True, cwd=tests_dir)
            results.append(torch.load(path))
        single, split = results
        for name in single:
            for ours, reference in zip(torch.utils._pytree.tree_leaves(split[name]),
                                       torch.utils._pytree.tree_leaves(single[name])):
                assert torch.equal(ours, reference), f"{name}, N = {n}"


@pytest.mark.parametrize("variant_name", ["avx512", "avx2"])
def test_a_team_smaller_than_planned_still_computes_everything(variant_name, tmp_path):
    # torch.set_num_threads(4) under OMP_THREAD_LIMIT=2: the kernels plan for 4 threads and OpenMP gives 2
    # (as nested parallelism or OMP_DYNAMIC can). The call must notice and rerun, not skip tiles.
    import os
    import subprocess
    import sys

    if variant_name not in fused_cpu_kernels():
        pytest.skip(f"this CPU or build has no {variant_name} micro-kernel")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    python_path = os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")]))
    for n in (1, 64):
        results = []
        for extra in ({"OMP_NUM_THREADS": "1"}, {"OMP_THREAD_LIMIT": "2", "REIDFAST_TEST_SET_THREADS": "4"}):
            path = tmp_path / f"{n}_{len(results)}.pt"
            env = dict(os.environ, PYTHONPATH=python_path, **{CPU_GEMM_ENV: variant_name}, **extra)
            subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, str(n), "5000", "40", str(path)], env=env,
                           check=True, cwd=tests_dir)
            results.append(torch.load(path))
        single, short_team = results
        for name in single:
            for ours, reference in zip(torch.utils._pytree.tree_leaves(short_team[name]),
                                       torch.utils._pytree.tree_leaves(single[name])):
                assert torch.equal(ours, reference), f"{name}, N = {n}"
