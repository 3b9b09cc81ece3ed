"""The drop-ins of reidfast.integrations against the originals they replace, on the same data.

In this file provider "reference" is the *original* (what a user runs today), so report.py's speedup column
reads "times faster than the original":
    pml_batch_hard_triplet:  PML's BatchHardMiner + TripletMarginLoss (the real package) vs reidfast's miner
                             under PML's loss, and vs BatchHardTripletMarginLoss (miner and loss fused);
    torchreid/fastreid evaluate_rank, re_ranking, TripletLoss/triplet_loss: the transcriptions in
                             tests/integrations_originals.py (their python paths: the PyPI packages ship no
                             compiled Cython) vs reidfast.integrations.torchreid / .fastreid.

    python -m pytest benchmarks/test_bench_integrations.py --benchmark-json=integrations.json
    python benchmarks/report.py integrations.json

Sizes: REIDFAST_BENCH_INTEGRATIONS_TRIPLET="B,D;..." (default 256,2048;1024,256), REIDFAST_BENCH_INTEGRATIONS_EVAL
="Q,G;..." (default 750,3000; Market-1501 is 3368,15913), REIDFAST_BENCH_INTEGRATIONS_RERANK="Q,G;..." (default
300,1200; the originals hold (Q+G)^2 float32 several times).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import reidfast
from reidfast.integrations import fastreid as rff
from reidfast.integrations import pml as rfpml
from reidfast.integrations import torchreid as rft

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))  # appended: benchmarks' conftest stays first
import integrations_originals as originals  # noqa: E402

MARGIN = 0.3
DEFAULT_SIZES = {"triplet": "256,2048;1024,256", "eval": "750,3000", "rerank": "300,1200"}


def _sizes(kind: str) -> list[tuple[int, int]]:
    spec = os.environ.get(f"REIDFAST_BENCH_INTEGRATIONS_{kind.upper()}", DEFAULT_SIZES[kind])
    return [tuple(int(v) for v in item.split(",")) for item in spec.split(";") if item.strip()]


def _pml_pair():
    pytest.importorskip("pytorch_metric_learning", reason="pytorch-metric-learning is not installed")
    from pytorch_metric_learning import losses, miners

    return miners.BatchHardMiner(), losses.TripletMarginLoss(margin=MARGIN)


def _triplet_losses(provider: str):
    if provider == "reference":  # PML's own pair
        miner, loss = _pml_pair()
        return lambda e, l: loss(e, l, miner(e, l))
    if provider == "reidfast-miner+pml-loss":
        _, loss = _pml_pair()
        miner = rfpml.BatchHardMiner()
        return lambda e, l: loss(e, l, miner(e, l))
    return rfpml.BatchHardTripletMarginLoss(margin=MARGIN)


def _timed_forward_backward(run_benchmark, op, provider, shape, loss_fn, embeddings, labels):
    def step():
        loss = loss_fn(embeddings, labels)
        loss.backward()
        embeddings.grad = None
        return loss

    run_benchmark(op, provider, "cpu", shape, step)


def _triplet_batch(batch: int, dim: int):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, dim, generator=generator).requires_grad_(), torch.arange(batch) // 4  # P x K, K = 4


@pytest.mark.parametrize("batch,dim", _sizes("triplet"))
@pytest.mark.parametrize("provider", ["reference", "reidfast-miner+pml-loss", "reidfast-fused"])
def test_pml_batch_hard_triplet(run_benchmark, provider, batch, dim):
    embeddings, labels = _triplet_batch(batch, dim)
    _timed_forward_backward(run_benchmark, "pml_batch_hard_triplet[forward+backward]", provider,
                            f"B={batch} D={dim}", _triplet_losses(provider), embeddings, labels)


ORIGINAL_TRIPLETS = {
    "torchreid.TripletLoss": (originals.TorchreidTripletLoss(MARGIN), rft.TripletLoss(MARGIN)),
    "fastreid.triplet_loss": (lambda e, l: originals.fastreid_triplet_loss(e, l, MARGIN, False, True),
                              lambda e, l: rff.triplet_loss(e, l, MARGIN, False, True)),
}


@pytest.mark.parametrize("batch,dim", _sizes("triplet"))
@pytest.mark.parametrize("name", ORIGINAL_TRIPLETS)
@pytest.mark.parametrize("provider", ["reference", "reidfast"])
def test_reid_library_triplet(run_benchmark, name, provider, batch, dim):
    embeddings, labels = _triplet_batch(batch, dim)
    loss_fn = ORIGINAL_TRIPLETS[name][provider != "reference"]
    _timed_forward_backward(run_benchmark, f"{name}[forward+backward]", provider, f"B={batch} D={dim}", loss_fn,
                            embeddings, labels)


def _ranking_data(num_query: int, num_gallery: int, dim: int = 128, seed: int = 0):
    """Clustered float32 features -> (q_feats, g_feats, q_pids, g_pids, q_camids, g_camids) (torch features)."""
    rng = np.random.default_rng(seed)
    num_ids = max(2, num_gallery // 12)
    centers = rng.normal(size=(num_ids, dim)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, num_ids, num_query), rng.integers(0, num_ids, num_gallery)
    q_camids, g_camids = rng.integers(0, 6, num_query), rng.integers(0, 6, num_gallery)
    q_feats = torch.from_numpy(centers[q_pids] + rng.normal(scale=1.2, size=(num_query, dim)).astype(np.float32))
    g_feats = torch.from_numpy(centers[g_pids] + rng.normal(scale=1.2, size=(num_gallery, dim)).astype(np.float32))
    return q_feats, g_feats, q_pids, g_pids, q_camids, g_camids


EVALUATORS = {
    "torchreid.evaluate_rank": (originals.torchreid_evaluate_rank, rft.evaluate_rank),
    "fastreid.evaluate_rank": (originals.fastreid_evaluate_rank, rff.evaluate_rank),
}


@pytest.mark.parametrize("num_query,num_gallery", _sizes("eval"))
@pytest.mark.parametrize("name", EVALUATORS)
@pytest.mark.parametrize("provider", ["reference", "reidfast"])
def test_evaluate_rank(run_benchmark, name, provider, num_query, num_gallery):
    q_feats, g_feats, *labels = _ranking_data(num_query, num_gallery)
    distmat = reidfast.pairwise_distance(q_feats, g_feats).numpy()
    function = EVALUATORS[name][provider != "reference"]
    run_benchmark(name, provider, "cpu", f"Q={num_query} G={num_gallery} float32", lambda: function(distmat, *labels))


@pytest.mark.parametrize("num_query,num_gallery", _sizes("rerank"))
@pytest.mark.parametrize("provider", ["reference", "reidfast"])
def test_re_ranking(run_benchmark, provider, num_query, num_gallery):
    q_feats, g_feats, *_ = _ranking_data(num_query, num_gallery)
    distances = [reidfast.pairwise_distance(a, b).numpy() for a, b in ((q_feats, g_feats), (q_feats, q_feats), (g_feats, g_feats))]
    function = originals.re_ranking if provider == "reference" else rft.re_ranking
    run_benchmark("torchreid/fastreid.re_ranking", provider, "cpu", f"Q={num_query} G={num_gallery} float32",
                  lambda: function(*distances))
