"""The headline GPU benchmarks, each against its baselines in the same process, for a short card session
(scripts/gpu_session.sh, stage `bench`). Every finished case is appended to the JSON file at once, so a run
stopped at its time limit keeps what it measured.

    python benchmarks/gpu_headline.py --out gpu-out/bench.json            # on a card
    python benchmarks/gpu_headline.py --out /tmp/bench.json --dry-run     # tiny shapes on the CPU: the plumbing

Cases (times: median of --repeats CUDA-event timings after one warm-up; memory: torch.cuda.max_memory_allocated
above the inputs):
  distance   16384 x 16384 x 2048, float32 (IEEE), TF32, float16: reidfast (each live backend) vs x @ y.T and
             torch.cdist;
  topk       reidfast.topk_distance (k = 100) vs reidfast.pairwise_distance + torch.topk, same shape, float32;
  triplet    batch-hard forward + backward at B = 512, 2048, 8192, D = 2048 vs the torch formula (cdist + masks)
             and pytorch-metric-learning where installed;
  evaluation Market-1501 scale: reidfast.evaluate on the distance matrix vs the reference;
  evaluate_features  Market-1501 + 500k distractors (3368 x 519,732, D = 2048) from features: reidfast
             evaluate_features on each live backend (cuda: rank counting fused into the distance tile, no Q x G
             matrix) vs a bare blockwise x @ y.T of the same shapes (the floor), 2 timed runs;
  rerank     Market-1501 scale from features (3368 queries, 15913 gallery, D = 2048) vs the reference (one
             cold run each: the reference alone takes tens of seconds), last.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

import reidfast
from reidfast.reference import evaluation as reference_evaluation
from reidfast.reference import rerank as reference_rerank

MARKET = dict(queries=3368, gallery=15913, identities=751, cameras=6)
DISTRACTORS_500K = 503_819  # Market-1501 + 500k: 519,732 gallery items


class Recorder:
    """Appends one JSON object per measured case to `path` (a JSON list, rewritten after every case)."""

    def __init__(self, path: Path, device: torch.device) -> None:
        self.path, self.device, self.cases = path, device, []
        self.info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "backends": {name: info.available for name, info in
                                                              reidfast.backends().items()}}

    def add(self, **case) -> None:
        self.cases.append(case)
        self.path.write_text(json.dumps({"info": self.info, "cases": self.cases}, indent=1))
        print(json.dumps(case), flush=True)


def measure(run: Callable[[], object], device: torch.device, repeats: int, warmup: bool = True) -> dict:
    """Median seconds of `repeats` runs after one warm-up, and the peak memory one run allocates."""
    if warmup:
        run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            began = time.perf_counter()
            run()
            times.append(time.perf_counter() - began)
    result = {"seconds": statistics.median(times), "repeats": repeats}
    if device.type == "cuda":
        result["peak_bytes"] = torch.cuda.max_memory_allocated(device) - baseline
    return result


def compare(recorder: Recorder, case: str, runs: dict[str, Callable[[], object]], device, repeats,
            warmup: bool = True, **facts) -> None:
    """One record per provider, each with its time relative to the first provider (the baseline)."""
    baseline = None
    for provider, run in runs.items():
        try:
            result = measure(run, device, repeats, warmup)
        except Exception as error:  # a backend that cannot take this case: say why, go on
            recorder.add(case=case, provider=provider, error=f"{type(error).__name__}: {error}"[:300], **facts)
            continue
        baseline = baseline or result["seconds"]
        recorder.add(case=case, provider=provider, ratio_to_baseline=result["seconds"] / baseline, **result, **facts)


def live_backends(device: torch.device) -> list[str]:
    return [name for name, info in reidfast.backends().items()
            if name in ("cuda", "triton", "cpu") and info.available and device.type in info.devices]


def with_backend(name: str, function: Callable[[], object]) -> Callable[[], object]:
    def run():
        with reidfast.use_backend(name):
            return function()
    return run


def bench_distance(recorder, device, sizes, repeats) -> None:
    n, m, d = sizes
    for precision in ("float32", "tf32", "float16"):
        dtype = torch.float16 if precision == "float16" else torch.float32
        x = torch.randn(n, d, device=device, dtype=dtype)
        y = torch.randn(m, d, device=device, dtype=dtype)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        runs = {"torch.mm": lambda: x @ y.T, "torch.cdist": lambda: torch.cdist(x.float(), y.float())}
        for name in live_backends(device):
            runs[f"reidfast[{name}]"] = with_backend(name, lambda: reidfast.pairwise_distance(x, y))
        compare(recorder, "distance", runs, device, repeats, precision=precision, n=n, m=m, d=d)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False


def bench_topk(recorder, device, sizes, repeats, k=100) -> None:
    n, m, d = sizes
    x = torch.randn(n, d, device=device)
    y = torch.randn(m, d, device=device)
    runs = {"distance+torch.topk": lambda: torch.topk(reidfast.pairwise_distance(x, y), k, dim=1, largest=False)}
    for name in live_backends(device):
        runs[f"reidfast[{name}]"] = with_backend(name, lambda: reidfast.topk_distance(x, y, k=k))
    compare(recorder, "topk", runs, device, repeats, n=n, m=m, d=d, k=k)


def torch_batch_hard(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """The usual torch formula: the full B x B distance matrix, masked max / min."""
    distances = torch.cdist(embeddings, embeddings)
    same = labels[:, None] == labels[None, :]
    hardest_positive = (distances * same).max(dim=1).values
    hardest_negative = distances.masked_fill(same, float("inf")).min(dim=1).values
    return torch.relu(hardest_positive - hardest_negative + margin).mean()


def bench_triplet(recorder, device, batches, dim, repeats) -> None:
    try:
        from pytorch_metric_learning import losses, miners
        pml = (losses.TripletMarginLoss(margin=0.3), miners.BatchHardMiner())
    except ImportError:
        pml = None
        recorder.add(case="triplet", provider="pytorch-metric-learning", error="not installed")
    for batch in batches:
        embeddings = torch.randn(batch, dim, device=device, requires_grad=True)
        labels = torch.arange(batch, device=device) // 4  # P x K batches, K = 4

        def backward(loss_of):
            return lambda: loss_of().backward()

        runs = {"torch formula": backward(lambda: torch_batch_hard(embeddings, labels))}
        if pml is not None:
            runs["pytorch-metric-learning"] = backward(lambda: pml[0](embeddings, labels, pml[1](embeddings, labels)))
        for name in live_backends(device):
            runs[f"reidfast[{name}]"] = with_backend(
                name, backward(lambda: reidfast.batch_hard_triplet_loss(embeddings, labels)))
        compare(recorder, "triplet fwd+bwd", runs, device, repeats, b=batch, d=dim)


def market_like(device, scale: dict, dim: int):
    generator = torch.Generator().manual_seed(0)
    q_pids = torch.randint(scale["identities"], (scale["queries"],), generator=generator)
    g_pids = torch.randint(scale["identities"], (scale["gallery"],), generator=generator)
    q_camids = torch.randint(scale["cameras"], (scale["queries"],), generator=generator)
    g_camids = torch.randint(scale["cameras"], (scale["gallery"],), generator=generator)
    centers = torch.randn(scale["identities"], dim, generator=generator)
    query = centers[q_pids] + 0.5 * torch.randn(scale["queries"], dim, generator=generator)
    gallery = centers[g_pids] + 0.5 * torch.randn(scale["gallery"], dim, generator=generator)
    return query.to(device), gallery.to(device), q_pids, g_pids, q_camids, g_camids


def bench_rerank(recorder, device, scale, dim, repeats) -> None:
    query, gallery, *_ = market_like(device, scale, dim)
    runs = {"reference": lambda: reference_rerank.re_ranking_features(query.cpu(), gallery.cpu())}
    runs["reidfast"] = lambda: reidfast.re_ranking(query, gallery)
    # one cold run each: the reference takes tens of seconds at Market scale
    compare(recorder, "rerank", runs, device, repeats, warmup=False, **scale, d=dim)


def bench_evaluation(recorder, device, scale, dim, repeats) -> None:
    query, gallery, q_pids, g_pids, q_camids, g_camids = market_like(device, scale, dim)
    distmat = reidfast.pairwise_distance(query, gallery)
    host = distmat.cpu().numpy()
    labels = (q_pids.numpy(), g_pids.numpy(), q_camids.numpy(), g_camids.numpy())
    runs = {"reference": lambda: reference_evaluation.evaluate_market1501(host, *labels, max_rank=50),
            "reidfast": lambda: reidfast.evaluate(distmat, *labels)}
    compare(recorder, "evaluation", runs, device, repeats, **scale, d=dim)


def bench_evaluate_features(recorder, device, scale, distractors, dim, repeats, block=1 << 16) -> None:
    """Market + distractors (pid 0: ranked like any other pid), features generated on the device."""
    query, gallery, q_pids, g_pids, q_camids, g_camids = market_like(device, scale, dim)
    generator = torch.Generator(device).manual_seed(1)
    noise = torch.randn(distractors, dim, device=device, generator=generator)
    gallery = torch.cat([gallery, noise * gallery.norm(dim=1).mean() / dim ** 0.5])
    del noise
    g_pids = torch.cat([g_pids, torch.zeros(distractors, dtype=g_pids.dtype)])
    g_camids = torch.cat([g_camids, torch.randint(scale["cameras"], (distractors,))])
    labels = (q_pids, g_pids, q_camids, g_camids)
    buffer = torch.empty(query.shape[0], min(block, gallery.shape[0]), device=device)

    def blockwise_matmul():
        for start in range(0, gallery.shape[0], block):
            part = gallery[start:start + block]
            torch.mm(query, part.T, out=buffer[:, :part.shape[0]])

    runs = {"blockwise x @ y.T": blockwise_matmul}
    for name in live_backends(device):
        runs[f"reidfast[{name}]"] = with_backend(name, lambda: reidfast.evaluate_features(query, gallery, *labels))
    compare(recorder, "evaluate_features", runs, device, repeats, **scale, gallery_total=gallery.shape[0], d=dim)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes, on the CPU when there is no card")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="*", default=None, help="cases: distance topk triplet evaluation evaluate_features rerank")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.dry_run:
        print("no CUDA device: use --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(args.out, device)
    tiny = args.dry_run
    repeats = 1 if tiny else args.repeats
    square = (64, 96, 32) if tiny else (16384, 16384, 2048)
    scale = dict(queries=40, gallery=120, identities=10, cameras=3) if tiny else MARKET
    cases = {
        "distance": lambda: bench_distance(recorder, device, square, repeats),
        "topk": lambda: bench_topk(recorder, device, square, repeats, k=10 if tiny else 100),
        "triplet": lambda: bench_triplet(recorder, device, (32, 64) if tiny else (512, 2048, 8192),
                                         16 if tiny else 2048, repeats),
        "evaluation": lambda: bench_evaluation(recorder, device, scale, 16 if tiny else 2048, repeats),
        "evaluate_features": lambda: bench_evaluate_features(recorder, device, scale, 200 if tiny else DISTRACTORS_500K,
                                                             16 if tiny else 2048, min(repeats, 2)),
        "rerank": lambda: bench_rerank(recorder, device, scale, 16 if tiny else 2048, 1),
    }
    for name in args.only or cases:
        began = time.perf_counter()
        cases[name]()
        print(f"== {name}: {time.perf_counter() - began:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
