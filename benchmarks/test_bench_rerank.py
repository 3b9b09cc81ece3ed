"""k-reciprocal re-ranking: the native ("cpu") and device-resident ("cuda", "torch") backends vs the reference.

    python -m pytest benchmarks/test_bench_rerank.py --benchmark-json=bench.json
    python benchmarks/report.py bench.json

Two inputs: "distances" (re_ranking_distances; the three distance matrices are built before timing, so
peak memory is what re-ranking adds beyond its inputs) and "features" (re_ranking from features).
Sizes "Q,G,D;...":
  REIDFAST_BENCH_RERANK_SIZES            fast backends only (default: Market-1501, Q 3,368 G 15,913, D 512 and 2048)
  REIDFAST_BENCH_RERANK_COMPARE_SIZES    fast backends and the reference (default: Q 1,000 G 5,000 D 512)
  REIDFAST_BENCH_RERANK_REFERENCE_MARKET=1 adds the reference at Market scale (needs ~8 GB of RAM).
  REIDFAST_BENCH_RERANK_PROVIDERS=cpu,torch  limits the providers (default: every usable one).
  REIDFAST_BENCH_MSMT17=1                MSMT17 scale (Q 11,659, G 82,161, D 512) from features, once: one call
                                         timed, with the process's peak RSS (the Q x G output alone is 3.6 GiB;
                                         distances-in would need g_g = 25 GiB, more than a 24 GB machine has).
On CPU the providers are "cpu" (the default there) and "torch" (forced onto CPU tensors); on a CUDA machine
"cuda" (the default for CUDA inputs: the torch pipeline with the CUDA Jaccard kernel) and "torch" run on CUDA
tensors. Market-scale runs take a while:
REIDFAST_BENCH_ROUNDS=1 keeps them to a few calls each.
"""
from __future__ import annotations

import os
import resource
import time

import pytest
import torch

import reidfast
from conftest import DEVICES, device_label, peak_memory_bytes, synchronize

MARKET = "3368,15913,512;3368,15913,2048"
MSMT17 = (11659, 82161, 512)
NATIVE_SIZES = os.environ.get("REIDFAST_BENCH_RERANK_SIZES", MARKET)
COMPARE_SIZES = os.environ.get("REIDFAST_BENCH_RERANK_COMPARE_SIZES", "1000,5000,512")
REFERENCE_AT_MARKET = os.environ.get("REIDFAST_BENCH_RERANK_REFERENCE_MARKET", "0").lower() in ("1", "true", "yes")
RUN_MSMT17 = os.environ.get("REIDFAST_BENCH_MSMT17") == "1"
PROVIDER_FILTER = [p for p in os.environ.get("REIDFAST_BENCH_RERANK_PROVIDERS", "").split(",") if p]


def _parse(spec: str) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in item.split(",")) for item in spec.split(";") if item.strip()]


def _fast_providers(device: str) -> list[str]:
    report = reidfast.backends()
    usable = [n for n in ("cuda", "cpu", "torch") if report[n].available and device in report[n].devices
              and not report[n].details.get("emulated")]
    return [n for n in usable if not PROVIDER_FILTER or n in PROVIDER_FILTER]


def _cases():
    seen = set()
    for device in DEVICES:
        reference = [] if PROVIDER_FILTER and "reference" not in PROVIDER_FILTER else ["reference"]
        for size in _parse(COMPARE_SIZES):
            for provider in _fast_providers(device) + reference:
                seen.add((device, size, provider))
        for size in _parse(NATIVE_SIZES):
            for provider in _fast_providers(device) + (reference if REFERENCE_AT_MARKET else []):
                seen.add((device, size, provider))
    for device, size, provider in sorted(seen):
        for inputs in ("distances", "features"):
            yield pytest.param(size, provider, inputs, device,
                               id=f"{device}-{'x'.join(map(str, size))}-{inputs}-{provider}")


def _clustered(num: int, dim: int, generator: torch.Generator, identities: int = 750) -> torch.Tensor:
    """Re-ID-like features: identity centres plus noise (about 20 images per identity at Market scale)."""
    centres = torch.randn(identities, dim, generator=generator)
    labels = torch.randint(0, identities, (num,), generator=generator)
    return centres[labels] + 0.5 * torch.randn(num, dim, generator=generator)


def _features(num_query: int, num_gallery: int, dim: int, device: str):
    generator = torch.Generator().manual_seed(0)
    query = _clustered(num_query, dim, generator)
    gallery = _clustered(num_gallery, dim, generator)
    if device == "cpu":
        return query.numpy(), gallery.numpy()
    return query.to(device), gallery.to(device)


@pytest.mark.parametrize("size,provider,inputs,device", list(_cases()))
def test_re_ranking(run_benchmark, size, provider, inputs, device):
    num_query, num_gallery, dim = size
    query, gallery = _features(num_query, num_gallery, dim, device)
    if inputs == "distances":
        q_g = reidfast.pairwise_distance(query, gallery)
        q_q = reidfast.pairwise_distance(query, query)
        g_g = reidfast.pairwise_distance(gallery, gallery)

        def function():
            with reidfast.use_backend(provider):
                return reidfast.re_ranking_distances(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3)
    else:
        def function():
            with reidfast.use_backend(provider):
                return reidfast.re_ranking(query, gallery, k1=20, k2=6, lambda_value=0.3)

    run_benchmark(f"re_ranking[{inputs}]", provider, device, f"{num_query}x{num_gallery}x{dim} k1=20 k2=6", function)


def _peak_rss_bytes() -> int:
    """The process's high-water resident set size (VmHWM)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.skipif(not RUN_MSMT17, reason="set REIDFAST_BENCH_MSMT17=1 (several minutes, ~5 GB of RAM)")
@pytest.mark.parametrize("device", DEVICES)
def test_re_ranking_msmt17_scale(benchmark, device):
    """One call at MSMT17 scale from 512-d features on the device's default backend: time, the call's extra
    memory, and the process's peak RSS (inputs and output included)."""
    num_query, num_gallery, dim = MSMT17
    query, gallery = _features(num_query, num_gallery, dim, device)
    provider = "cpu" if device == "cpu" and reidfast.backends()["cpu"].available else "torch"
    measured = {}

    def call():
        start = time.perf_counter()
        with reidfast.use_backend(provider):
            result = reidfast.re_ranking(query, gallery, k1=20, k2=6, lambda_value=0.3)
        synchronize(device)
        measured["seconds"] = time.perf_counter() - start
        assert tuple(result.shape) == (num_query, num_gallery)
        return result

    def measure():
        measured["extra_bytes"] = peak_memory_bytes(call, device)

    benchmark.pedantic(measure, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(
        op="re_ranking[features]", provider=provider, device=device_label(device),
        shape=f"{num_query}x{num_gallery}x{dim} k1=20 k2=6",
        peak_memory_bytes=measured["extra_bytes"], process_peak_rss_bytes=_peak_rss_bytes(),
        call_seconds=measured["seconds"],
    )
    print(f"\nMSMT17 scale re_ranking[features] on {device}/{provider}: {measured['seconds']:.1f} s, "
          f"extra {measured['extra_bytes'] / 2**30:.2f} GiB, process peak RSS {_peak_rss_bytes() / 2**30:.2f} GiB")
