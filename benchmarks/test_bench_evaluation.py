"""Re-ID evaluation (Market-1501 and CUHK03 protocols): the cpu and torch backends vs the numpy reference.

    python -m pytest benchmarks/test_bench_evaluation.py --benchmark-json=bench.json
    python benchmarks/report.py bench.json

Sizes: Market-1501 test split (3,368 queries x 15,913 gallery: 751 identities, 6 cameras, 2,798
distractors of pid 0 in the gallery; junk images are dropped by the loaders), Market-1501 protocol.
CUHK03-NP test split (1,400 x 5,332, 700 identities, 2 cameras), CUHK03 single-shot protocol (10 seeded
repeats). MSMT17 test split (11,659 x 82,161, 3,060 identities, 15 cameras) with REIDFAST_BENCH_MSMT17=1:
fast backends only (the reference takes minutes), and it needs ~3.8 GB for the float32 distmat plus the
time to fill it.

On a CUDA machine the same cases also run with the distmat on the GPU: `torch` (the default there) sorts
on the device, `cpu` streams the rows to the host, `reference` copies the whole matrix to the host.

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
CUHK03_NP = dict(num_query=1400, num_gallery=5332, num_ids=700, num_cams=2, num_distractors=0)
DATASETS = {"market1501": MARKET1501, "cuhk03np": CUHK03_NP, "msmt17": MSMT17}
PROTOCOL_OF = {"market1501": "market1501", "cuhk03np": "cuhk03", "msmt17": "market1501"}


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
    native = [p for p in fast_backends("cpu") if p == "cpu"]
    msmt17 = pytest.mark.skipif(os.environ.get("REIDFAST_BENCH_MSMT17") != "1", reason="set REIDFAST_BENCH_MSMT17=1 (~3.8 GB)")
    for device in DEVICES:
        # torch on CPU sorts every row (about the reference's time); on CUDA it is the default.
        for dataset in ("market1501", "cuhk03np"):
            for provider in native + ["torch", "reference"]:
                yield pytest.param(dataset, device, provider, id=f"{dataset}-{device}-{provider}")
        for provider in native + (["torch"] if device == "cuda" else []):
            yield pytest.param("msmt17", device, provider, id=f"msmt17-{device}-{provider}", marks=msmt17)


@pytest.fixture(scope="module")
def problems():
    cache = {}

    def get(name: str):
        if name not in cache:
            cache.clear()  # one large problem in memory at a time
            cache[name] = make_problem(**DATASETS[name])
        return cache[name]

    return get


@pytest.mark.parametrize("dataset,device,provider", list(_cases()))
def test_evaluate(run_benchmark, problems, dataset, device, provider):
    distmat, q_pids, g_pids, q_camids, g_camids = problems(dataset)
    distmat = distmat.to(device)
    protocol = PROTOCOL_OF[dataset]

    def function():
        with reidfast.use_backend(provider):
            return reidfast.evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, protocol=protocol)

    shape = f"{distmat.shape[0]}x{distmat.shape[1]} float32 ({dataset})"
    result = run_benchmark(f"evaluate[{protocol}]", provider, device, shape, function)
    assert result.num_valid_queries > 0 and result.backend == provider
