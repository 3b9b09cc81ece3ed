"""Batch-hard triplet loss, forward, backward and forward+backward: every usable backend vs the reference, the
torch formula most projects use (B x B matrix, masked max/min: reid-strong-baseline), pytorch-metric-learning
(BatchHardMiner + TripletMarginLoss) when installed, and one Gram matmul x @ x.T (the floor). "cpu[avx2]",
"cpu[blas]": the cpu backend forced onto its other product paths (see test_bench_distance.py).
"backward" replays the backward of one forward (retain_graph): for a backend it is that backend's backward (on
GPU the fused cuda / triton kernels; "reference" runs the torch-ops backward with index_add_).

    python -m pytest benchmarks/test_bench_triplet.py --benchmark-json=triplet.json
    python benchmarks/report.py triplet.json

Sizes: REIDFAST_BENCH_TRIPLET="B,D;B,D" (default: a CPU sweep, or the GPU sweep on CUDA). P x K labels, K = 4.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import reidfast
from conftest import DEVICES, fast_backends
from test_bench_distance import _with_cpu_paths, use_provider

DEFAULT_SIZES = {"cpu": "256,2048;1024,256;4096,256", "cuda": "128,2048;512,2048;2048,256;2048,2048;8192,256;8192,2048"}
MARGIN = 0.3
MODES = ("forward", "backward", "forward+backward")


def _sizes(device: str) -> list[tuple[int, int]]:
    spec = os.environ.get("REIDFAST_BENCH_TRIPLET", DEFAULT_SIZES[device])
    return [tuple(int(v) for v in item.split(",")) for item in spec.split(";") if item.strip()]


def torch_formula(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """reid-strong-baseline TripletLoss: full distance matrix, masked hardest positive/negative."""
    x = embeddings.float()
    squared = x.pow(2).sum(1, keepdim=True) + x.pow(2).sum(1)[None] - 2 * x @ x.T
    dist = squared.clamp(min=1e-12).sqrt()
    is_pos = labels[:, None] == labels[None, :]
    dist_ap = dist.masked_fill(~is_pos, float("-inf")).amax(1)
    dist_an = dist.masked_fill(is_pos, float("inf")).amin(1)
    return F.margin_ranking_loss(dist_an, dist_ap, torch.ones_like(dist_an), margin=MARGIN)


def _pml_loss():
    try:
        from pytorch_metric_learning import losses, miners
    except ImportError:
        return None
    miner = miners.BatchHardMiner()
    loss = losses.TripletMarginLoss(margin=MARGIN)
    return lambda embeddings, labels: loss(embeddings, labels, miner(embeddings, labels))


def _providers(device: str) -> list[str]:
    providers = _with_cpu_paths([p for p in fast_backends(device) if not (device == "cpu" and p == "triton")])
    providers += ["reference", "torch_formula", "gram_matmul"]
    if _pml_loss() is not None:
        providers.append("pytorch_metric_learning")
    return providers


def _cases():
    for device in DEVICES:
        for batch, dim in _sizes(device):
            for provider in _providers(device):
                for mode in MODES:
                    yield pytest.param(device, batch, dim, provider, mode, id=f"{device}-{batch}x{dim}-{provider}-{mode}")


@pytest.mark.parametrize("device,batch,dim,provider,mode", list(_cases()))
def test_batch_hard_triplet(run_benchmark, device, batch, dim, provider, mode):
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(batch, dim, generator=generator).to(device).requires_grad_(mode != "forward")
    labels = (torch.arange(batch) // 4).to(device)
    if provider == "torch_formula":
        loss_fn = torch_formula
    elif provider == "pytorch_metric_learning":
        loss_fn = _pml_loss()
    elif provider == "gram_matmul":
        loss_fn = lambda e, _: (e @ e.T).sum()  # noqa: E731  the product alone (and its backward)
    else:
        def loss_fn(e, l):
            with use_provider(provider):
                return reidfast.batch_hard_triplet_loss(e, l, margin=MARGIN)

    def step():
        loss = loss_fn(embeddings, labels)
        if mode != "forward":
            loss.backward()
            embeddings.grad = None
        return loss

    if mode == "backward":  # one forward outside the timing; every call replays its backward
        with torch.enable_grad():
            forward_loss = loss_fn(embeddings, labels)

        def step():
            forward_loss.backward(retain_graph=True)
            embeddings.grad = None
            return forward_loss

    with torch.set_grad_enabled(mode != "forward"):
        run_benchmark(f"batch_hard_triplet[{mode}]", provider, device, f"B={batch} D={dim}", step)
