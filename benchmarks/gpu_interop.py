"""Interop that only a card can check, for scripts/gpu_session.sh (stage `interop`): each check passes, fails
(with the error) or is skipped with the reason, and its status is appended to the JSON file at once.

    python benchmarks/gpu_interop.py --out gpu-out/interop.json

  cupy     cupy arrays in (DLPack, no copy), cupy arrays out: pairwise_distance, topk_distance, re_ranking,
           each equal to the torch result;
  amp      batch_hard_triplet_loss under torch.autocast(float16 and bfloat16): a finite loss and gradients,
           and a float32 loss close to the un-autocast one;
  ddp      2 processes, NCCL, DistributedDataParallel over a linear embedding with the batch-hard loss: both
           ranks end with identical weights. Needs 2 GPUs: with one card it is skipped and says so.
Without a card every check is skipped (the script's own plumbing still runs).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

import torch

import reidfast


def check_cupy() -> str:
    try:
        import cupy
    except ImportError:
        return "skipped: cupy is not installed"
    x = cupy.random.standard_normal((300, 64), dtype=cupy.float32)
    y = cupy.random.standard_normal((500, 64), dtype=cupy.float32)
    distances = reidfast.pairwise_distance(x, y)
    assert isinstance(distances, cupy.ndarray) and distances.shape == (300, 500), type(distances)
    expected = reidfast.pairwise_distance(torch.from_dlpack(x), torch.from_dlpack(y))
    torch.testing.assert_close(torch.from_dlpack(distances), expected)
    values, indices = reidfast.topk_distance(x, y, k=10)
    assert isinstance(values, cupy.ndarray) and isinstance(indices, cupy.ndarray)
    torch.testing.assert_close(torch.from_dlpack(values), expected.topk(10, dim=1, largest=False).values)
    reranked = reidfast.re_ranking(x, y)
    assert isinstance(reranked, cupy.ndarray) and reranked.shape == (300, 500), type(reranked)
    return "passed"


def check_amp() -> str:
    generator = torch.Generator(device="cuda").manual_seed(0)
    embeddings = torch.randn(256, 128, device="cuda", generator=generator)
    labels = torch.arange(256, device="cuda") // 4
    layer = torch.nn.Linear(128, 128).cuda()
    exact = reidfast.batch_hard_triplet_loss(layer(embeddings), labels)
    for dtype in (torch.float16, torch.bfloat16):
        layer.zero_grad()
        with torch.autocast("cuda", dtype=dtype):
            features = layer(embeddings)
            loss = reidfast.batch_hard_triplet_loss(features, labels)
        loss.backward()
        assert features.dtype == dtype and torch.isfinite(loss), (dtype, loss)
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters()), dtype
        torch.testing.assert_close(loss.float(), exact, atol=0.05, rtol=0.05)
    return "passed"


def _ddp_worker(rank: int, world_size: int, init_file: str) -> None:
    torch.distributed.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world_size)
    torch.cuda.set_device(rank)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 32).cuda(), device_ids=[rank])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator(device="cuda").manual_seed(rank)
    for _ in range(5):
        inputs = torch.randn(128, 64, device="cuda", generator=generator)
        labels = torch.arange(128, device="cuda") // 4
        optimizer.zero_grad()
        reidfast.batch_hard_triplet_loss(model(inputs), labels).backward()
        optimizer.step()
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(weights) for _ in range(world_size)]
    torch.distributed.all_gather(gathered, weights)
    assert all(torch.equal(gathered[0], other) for other in gathered), "ranks diverged"
    torch.distributed.destroy_process_group()


def check_ddp() -> str:
    if torch.cuda.device_count() < 2:
        return f"skipped: a 2-process NCCL run needs 2 GPUs, this machine has {torch.cuda.device_count()}"
    if not torch.distributed.is_nccl_available():
        return "skipped: this torch has no NCCL"
    with tempfile.TemporaryDirectory() as scratch:
        torch.multiprocessing.spawn(_ddp_worker, args=(2, os.path.join(scratch, "init")), nprocs=2, join=True)
    return "passed"


CHECKS = {"cupy": check_cupy, "amp": check_amp, "ddp": check_ddp}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results, failed = {}, False
    for name, check in CHECKS.items():
        if not torch.cuda.is_available():
            results[name] = "skipped: no CUDA device"
        else:
            try:
                results[name] = check()
            except Exception:  # report every check, not just the first failure
                results[name] = "failed: " + traceback.format_exc(limit=3)[-1500:]
                failed = True
        print(f"{name}: {results[name]}", flush=True)
        args.out.write_text(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
