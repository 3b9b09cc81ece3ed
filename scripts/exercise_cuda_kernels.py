"""Runs every CUDA kernel once per dtype and metric on small shapes, checked against the reference: the
workload for `compute-sanitizer` (memcheck, racecheck, synccheck, initcheck) on a card, where small shapes
keep the sanitizers fast. Without a card it runs the same launches on the CPU emulator
(REIDFAST_EMULATE_CUDA=1 is set here when torch sees no GPU).

    compute-sanitizer --tool racecheck --error-exitcode 1 python scripts/exercise_cuda_kernels.py
"""
from __future__ import annotations

import os
import sys
import warnings

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("REIDFAST_EMULATE_CUDA", "1")

import reidfast  # noqa: E402
from reidfast.reference.distance import pairwise_distance as reference_distance  # noqa: E402

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
METRICS = ("euclidean", "sqeuclidean", "cosine")
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9, torch.float16: 2e-2, torch.bfloat16: 1.5e-1}


def launches(device: torch.device, dtype: torch.dtype, metric: str) -> None:
    """Distance; top-k with one column chunk, several chunks (merge kernel) and a k that needs more than
    48 KiB of shared memory; batch-hard mining (with and without separate candidates) and its backward; rank
    counting (evaluate_features, both protocols: with and without groups)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(70, 37, generator=generator).to(device, dtype)
    y = torch.randn(200, 37, generator=generator).to(device, dtype)
    expected = reference_distance(x.double(), y.double(), metric)
    tolerance = TOLERANCE[dtype] * (4 if metric != "cosine" else 1)

    distances = reidfast.pairwise_distance(x, y, metric=metric)
    assert (distances.double() - expected).abs().max() <= tolerance, ("pairwise_distance", dtype, metric)
    for k in (1, 9, 150):  # 150: float32 lists above 48 KiB of shared memory
        values, _ = reidfast.topk_distance(x, y, k=k, metric=metric)
        want = expected.sort(dim=1).values[:, :k]
        assert (values.double() - want).abs().max() <= tolerance, ("topk_distance", dtype, metric, k)
    big = torch.randn(3000, 37, generator=generator).to(device, dtype)  # several column chunks per row tile
    reidfast.topk_distance(x, big, k=20, metric=metric)

    pids = [torch.randint(0, 9, (rows,), generator=generator) for rows in (70, 200)]
    cameras = [torch.randint(0, 3, (rows,), generator=generator) for rows in (70, 200)]
    for protocol in ("market1501", "cuhk03"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # queries without a match in other cameras are skipped, and said so
            got = reidfast.evaluate_features(x, y, *pids, *cameras, metric=metric, protocol=protocol, max_rank=10)
            with reidfast.use_backend(None):  # evaluate has no cuda kernel: the matrix's default backend
                want = reidfast.evaluate(distances, *pids, *cameras, protocol=protocol, max_rank=10)
        assert got.mAP == want.mAP and (got.cmc == want.cmc).all(), ("evaluate_features", dtype, metric, protocol)

    if dtype in (torch.float32, torch.float16):
        labels = (torch.arange(70) % 7).to(device)
        anchors = x.float().requires_grad_()
        loss = reidfast.batch_hard_triplet_loss(anchors, labels, metric=metric)
        loss.backward()
        candidates = torch.randn(3000, 37, generator=generator).to(device).requires_grad_()
        loss = reidfast.batch_hard_triplet_loss(anchors, labels, metric=metric, candidates=candidates,
                                                candidate_labels=(torch.arange(3000) % 11).to(device))
        loss.backward()
        assert torch.isfinite(anchors.grad).all() and torch.isfinite(candidates.grad).all()


def main() -> int:
    report = reidfast.backends()["cuda"]
    if not report.available:
        print(f"the cuda backend is not usable: {report.reason}", file=sys.stderr)
        return 1
    device = torch.device("cuda" if "cuda" in report.devices else "cpu")
    with reidfast.use_backend("cuda"):
        for dtype in DTYPES:
            for metric in METRICS:
                launches(device, dtype, metric)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"every CUDA kernel ran on {device} ({report.reason})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
