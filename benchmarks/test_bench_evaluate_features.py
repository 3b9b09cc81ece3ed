"""Evaluation straight from features (rf.evaluate_features) against its floor and the two-step path.

    python -m pytest benchmarks/test_bench_evaluate_features.py --benchmark-json=bench.json
    python benchmarks/report.py bench.json

Providers, per shape (Q queries x G gallery items, D features, float32, euclidean, Market-1501 protocol):
    cpu         rf.evaluate_features (native cpu backend; the torch backend on CUDA inputs)
    cpu-two-step  (G = 100k only) the same with the counting not fused: the fused kernel's distances into a
                32 MiB block, then counted (evaluate_features' `_HostPass.fused_counting = False`)
    bare-mm     the floor: one blockwise `x @ y.T` of the same shapes (torch.mm into a reused block of
                the same size evaluate_features uses), nothing else
    reference   rf.evaluate(rf.pairwise_distance(x, y), ...): the whole Q x G matrix (speedup column)
peak MiB is the memory one call needs beyond the inputs (benchmarks/conftest.py: RSS on the host).

Shapes: Market-1501 test split (3,368 x 15,913) by default. Behind switches (the coordinator's runs):
    REIDFAST_BENCH_G100K=1     Q 3,368, G 100,000, D 256 and 2048 (the Q x G matrix: 1.3 GB)
    REIDFAST_BENCH_MARKET500K=1  Q 3,368, G 519,732 (Market-1501 + 500k distractors), D 256 and 2048:
                               features 4.3 GB at D 2048; no `reference` (a 6.5 GiB matrix)
    REIDFAST_BENCH_MSMT17=1    Q 11,659, G 82,161, D 2048 (MSMT17 test split)
One call at Market + 500k, D 2048 takes minutes on 2 cores: set REIDFAST_BENCH_ROUNDS=1 there.

Features are synthetic with a Market-like identity structure: 751 identities (3,060 for MSMT17), one
random centre each, queries and gallery items are centre + N(0, noise^2) noise per dimension, 6 cameras
(15), distractors (pid 0) drawn around centres of their own; noise chosen so that mAP lands near 0.5.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import reidfast
from conftest import fast_backends
from reidfast.ops import evaluate_features as evaluate_features_op

MARKET1501 = dict(num_query=3368, num_gallery=15913, num_ids=751, num_cams=6, num_distractors=2798)
G100K = dict(num_query=3368, num_gallery=100_000, num_ids=751, num_cams=6, num_distractors=100_000 - 13_115)
MARKET500K = dict(num_query=3368, num_gallery=519_732, num_ids=751, num_cams=6, num_distractors=500_000 + 2798)
MSMT17 = dict(num_query=11659, num_gallery=82161, num_ids=3060, num_cams=15, num_distractors=0)
SWITCHES = {"g100k": "REIDFAST_BENCH_G100K", "market500k": "REIDFAST_BENCH_MARKET500K", "msmt17": "REIDFAST_BENCH_MSMT17"}
SIZES = {"market1501": MARKET1501, "g100k": G100K, "market500k": MARKET500K, "msmt17": MSMT17}
DIMS = {"market1501": (256, 2048), "g100k": (256, 2048), "market500k": (256, 2048), "msmt17": (2048,)}
# Per-dimension noise (relative to unit-variance centres) for mAP near 0.5 with these identity counts.
NOISE = {256: 1.8, 2048: 3.2}
ROWS_PER_FILL = 8192


def make_features(num_query, num_gallery, num_ids, num_cams, num_distractors, dim, seed=0):
    """(query (Q, D), gallery (G, D) float32 torch, q_pids, g_pids, q_camids, g_camids int64 numpy), filled
    in blocks of rows so that generating them needs no temporary of their size."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_ids + 1, dim, generator=generator)
    q_pids = rng.integers(1, num_ids + 1, num_query)
    g_pids = np.concatenate([rng.integers(1, num_ids + 1, num_gallery - num_distractors), np.zeros(num_distractors, np.int64)])
    g_pids = g_pids[rng.permutation(num_gallery)]
    noise = NOISE.get(dim, 1.6)

    def fill(pids: np.ndarray) -> torch.Tensor:
        out = torch.empty(pids.size, dim)
        for start in range(0, pids.size, ROWS_PER_FILL):
            rows = slice(start, start + ROWS_PER_FILL)
            block = torch.randn(out[rows].shape, generator=generator).mul_(noise)
            ids = torch.from_numpy(pids[rows])
            distractor = ids == 0  # distractors: around centres of their own, not an identity's
            block[~distractor] += centres[ids[~distractor]]
            block[distractor] += torch.randn(int(distractor.sum()), dim, generator=generator)
            out[rows] = block
        return out

    query, gallery = fill(q_pids), fill(g_pids)
    return query, gallery, q_pids, g_pids, rng.integers(0, num_cams, num_query), rng.integers(0, num_cams, num_gallery)


def bare_blockwise_mm(query: torch.Tensor, gallery: torch.Tensor) -> None:
    """The floor: query @ gallery.T, block after block of gallery rows (evaluate_features' block size)."""
    block = evaluate_features_op._block_columns(None, query.shape[0], 4, evaluate_features_op.BLOCK_BYTES)
    out = torch.empty(query.shape[0], block)
    for start in range(0, gallery.shape[0], block):
        rows = gallery[start : start + block]
        torch.mm(query, rows.T, out=out[:, : rows.shape[0]])


def _cases():
    native = "cpu" in fast_backends("cpu")
    for name, dims in DIMS.items():
        switch = SWITCHES.get(name)
        marks = [pytest.mark.skipif(os.environ.get(switch) != "1", reason=f"set {switch}=1")] if switch else []
        for dim in dims:
            providers = (["cpu"] if native else []) + ["bare-mm"] + ([] if name == "market500k" else ["reference"])
            if native and name == "g100k":
                providers.insert(1, "cpu-two-step")
            for provider in providers:
                yield pytest.param(name, dim, provider, id=f"{name}-d{dim}-{provider}", marks=marks)


@pytest.fixture(scope="module")
def problems():
    cache = {}

    def get(name: str, dim: int):
        if (name, dim) not in cache:
            cache.clear()  # one problem in memory at a time
            cache[name, dim] = make_features(**SIZES[name], dim=dim)
        return cache[name, dim]

    return get


@pytest.mark.parametrize("name,dim,provider", list(_cases()))
def test_evaluate_features(run_benchmark, problems, name, dim, provider, monkeypatch):
    query, gallery, q_pids, g_pids, q_camids, g_camids = problems(name, dim)
    if provider == "cpu-two-step":
        monkeypatch.setattr(evaluate_features_op._HostPass, "fused_counting", False)
    if provider in ("cpu", "cpu-two-step"):
        function = lambda: reidfast.evaluate_features(query, gallery, q_pids, g_pids, q_camids, g_camids)  # noqa: E731
    elif provider == "bare-mm":
        function = lambda: bare_blockwise_mm(query, gallery)  # noqa: E731
    else:
        def function():
            distmat = reidfast.pairwise_distance(query, gallery)
            return reidfast.evaluate(distmat, q_pids, g_pids, q_camids, g_camids)

    shape = f"{query.shape[0]}x{gallery.shape[0]} d{dim} ({name})"
    result = run_benchmark("evaluate_features", provider, "cpu", shape, function)
    if provider != "bare-mm":
        assert result.num_valid_queries > 0
