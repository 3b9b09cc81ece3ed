"""Re-ID evaluation (Market-1501 protocol): the native evaluator vs the numpy reference.

    python -m pytest benchmarks/test_bench_evaluation.py --benchmark-json=bench.json
    python benchmarks/report.py bench.json

Sizes: Market-1501 test split (3,368 queries x 15,913 gallery: 751 identities, 6 cameras, 2,798
distractors of pid 0 in the gallery; junk images are dropped by the loaders), native and reference. MSMT17 test split
(11,659 x 82,161, 3,060 identities, 15 cameras) with REIDFAST_BENCH_MSMT17=1: native only (the reference
takes minutes), and it needs ~3.8 GB for the float32 distmat plus the time to fill it.

Distances are synthetic, float32: N(1, 0.15) with true matches 0.35 closer on average, so matches spread
over the whole ranking (mAP ~ 0.5, mINP ~ 0.1) as with a mediocre model; REIDFAST_BENCH_EVAL_DISTRIBUTION=uniform
makes every distance U(0, 1), the native pass's worst case (every item lies before the farthest match).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import reidfast
from conftest import DEVICES, fast_backends

MARKET1501 = dict(num_query=3368, num_gallery=15913, num_ids=751, num_cams=6, num_distractors=2798)
MSMT17 = dict(num_query=11659, num_gallery=82161, num_ids=3060, num_cams=15, num_distractors=0)


def make_problem(num_query, num_gallery, num_ids, num_cams, num_distractors, seed=0):
    """(distmat float32 torch (Q, G), q_pids, g_pids, q_camids, g_camids int64 numpy)."""
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, num_ids + 1, num_query)
    g_pids = np.concatenate([rng.integers(1, num_ids + 1, num_gallery - num_distractors), np.zeros(num_distractors, np.int64)])
    g_pids = g_pids[rng.permutation(num_gallery)]
    q_camids = rng.integers(0, num_cams, num_query)
    g_camids = rng.integers(0, num_cams, num_gallery)
    generator = torch.Generator().manual_seed(seed)
    if os.environ.get("REIDFAST_BENCH_EVAL_DISTRIBUTION", "clustered") == "uniform":
        distmat = torch.rand(num_query, num_gallery, generator=generator)
    else:
        distmat = torch.randn(num_query, num_gallery, generator=generator).mul_(0.15).add_(1.0)
        q_pids_t, g_pids_t = torch.from_numpy(q_pids), torch.from_numpy(g_pids)
        for start in range(0, num_query, 1024):  # matches 0.35 closer, without a Q x G bool matrix at once
            rows = slice(start, start + 1024)
            distmat[rows] -= 0.35 * (q_pids_t[rows, None] == g_pids_t[None, :])
    return distmat, q_pids, g_pids, q_camids, g_camids


def _cases():
    providers = [p for p in fast_backends("cpu") if p == "cpu"] + ["reference"]
    for provider in providers:
        yield pytest.param("market1501", "cpu", provider, id=f"market1501-cpu-{provider}")
    if "cpu" in providers and "cuda" in DEVICES:  # a CUDA distmat streamed to the native pass in row blocks
        yield pytest.param("market1501", "cuda", "cpu", id="market1501-cuda-cpu")
    if "cpu" in providers:
        yield pytest.param(
            "msmt17", "cpu", "cpu", id="msmt17-cpu-cpu",
            marks=pytest.mark.skipif(os.environ.get("REIDFAST_BENCH_MSMT17") != "1", reason="set REIDFAST_BENCH_MSMT17=1 (~3.8 GB)"),
        )


@pytest.fixture(scope="module")
def problems():
    cache = {}

    def get(name: str):
        if name not in cache:
            cache.clear()  # one large problem in memory at a time
            cache[name] = make_problem(**(MARKET1501 if name == "market1501" else MSMT17))
        return cache[name]

    return get


@pytest.mark.parametrize("dataset,device,provider", list(_cases()))
def test_evaluate(run_benchmark, problems, dataset, device, provider):
    distmat, q_pids, g_pids, q_camids, g_camids = problems(dataset)
    distmat = distmat.to(device)

    def function():
        with reidfast.use_backend(provider):
            return reidfast.evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50)

    shape = f"{distmat.shape[0]}x{distmat.shape[1]} float32 ({dataset})"
    result = run_benchmark("evaluate[market1501]", provider, device, shape, function)
    assert result.num_valid_queries > 0
