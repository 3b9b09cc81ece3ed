"""k-reciprocal re-ranking: the native backend vs the reference (the published numpy algorithm).

    python -m pytest benchmarks/test_bench_rerank.py --benchmark-json=bench.json
    python benchmarks/report.py bench.json

Two inputs: "distances" (re_ranking_distances; the three distance matrices are built before timing, so
peak memory is what re-ranking adds beyond its inputs) and "features" (re_ranking from features).
Sizes "Q,G,D;...":
  REIDFAST_BENCH_RERANK_SIZES            native only (default: Market-1501, Q 3,368 G 15,913, D 512 and 2048)
  REIDFAST_BENCH_RERANK_COMPARE_SIZES    native and reference (default: Q 1,000 G 5,000 D 512)
  REIDFAST_BENCH_RERANK_REFERENCE_MARKET=1 adds the reference at Market scale (needs ~8 GB of RAM).
Market-scale runs take a while: REIDFAST_BENCH_ROUNDS=1 keeps them to a few calls each.
"""
from __future__ import annotations

import os

import pytest
import torch

import reidfast
from conftest import fast_backends

MARKET = "3368,15913,512;3368,15913,2048"
NATIVE_SIZES = os.environ.get("REIDFAST_BENCH_RERANK_SIZES", MARKET)
COMPARE_SIZES = os.environ.get("REIDFAST_BENCH_RERANK_COMPARE_SIZES", "1000,5000,512")
REFERENCE_AT_MARKET = os.environ.get("REIDFAST_BENCH_RERANK_REFERENCE_MARKET", "0").lower() in ("1", "true", "yes")


def _parse(spec: str) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in item.split(",")) for item in spec.split(";") if item.strip()]


def _cases():
    native = [p for p in fast_backends("cpu") if p == "cpu"]
    seen = set()
    for size in _parse(COMPARE_SIZES):
        for provider in native + ["reference"]:
            seen.add((size, provider))
    for size in _parse(NATIVE_SIZES):
        for provider in native + (["reference"] if REFERENCE_AT_MARKET else []):
            seen.add((size, provider))
    for size, provider in sorted(seen):
        for inputs in ("distances", "features"):
            yield pytest.param(size, provider, inputs, id=f"cpu-{'x'.join(map(str, size))}-{inputs}-{provider}")


def _clustered(num: int, dim: int, generator: torch.Generator, identities: int = 750) -> torch.Tensor:
    """Re-ID-like features: identity centres plus noise (about 20 images per identity at Market scale)."""
    centres = torch.randn(identities, dim, generator=generator)
    labels = torch.randint(0, identities, (num,), generator=generator)
    return centres[labels] + 0.5 * torch.randn(num, dim, generator=generator)


@pytest.mark.parametrize("size,provider,inputs", list(_cases()))
def test_re_ranking(run_benchmark, size, provider, inputs):
    num_query, num_gallery, dim = size
    generator = torch.Generator().manual_seed(0)
    query = _clustered(num_query, dim, generator).numpy()
    gallery = _clustered(num_gallery, dim, generator).numpy()
    if inputs == "distances":
        with reidfast.use_backend("cpu" if "cpu" in fast_backends("cpu") else "reference"):
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

    run_benchmark(f"re_ranking[{inputs}]", provider, "cpu", f"{num_query}x{num_gallery}x{dim} k1=20 k2=6", function)
