"""BatchHardTripletLoss(gather_distributed=True) on 2 gloo processes equals the single-process loss on the
concatenated batch, values and gradients."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import reidfast

WORLD = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _global_batch():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(14, 6, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3, 4, 0, 1, 4, 2, 5])
    sizes = [8, 6]  # ranks hold different batch sizes
    return embeddings, labels, sizes


def _worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        embeddings, labels, sizes = _global_batch()
        start = sum(sizes[:rank])
        local = embeddings[start:start + sizes[rank]].clone().requires_grad_()
        criterion = reidfast.BatchHardTripletLoss(margin=0.3, reduction="sum", gather_distributed=True)
        loss = criterion(local, labels[start:start + sizes[rank]])
        loss.backward()
        results[rank] = (float(loss), local.grad.clone())
    finally:
        dist.destroy_process_group()


def test_gathered_loss_equals_single_process_loss():
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    embeddings, labels, sizes = _global_batch()
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(_free_port(), results), nprocs=WORLD, join=True)
        results = dict(results)
    single = embeddings.clone().requires_grad_()
    expected = reidfast.batch_hard_triplet_loss(single, labels, margin=0.3, reduction="sum")
    expected.backward()
    # Each rank sums over its own anchors; the gather's backward sums every rank's gradient contributions.
    assert abs(sum(results[r][0] for r in range(WORLD)) - float(expected.detach())) < 1e-10
    gathered_grad = torch.cat([results[r][1] for r in range(WORLD)])
    assert torch.allclose(gathered_grad, single.grad, atol=1e-10)
