"""Re-ranked evaluation and re-ranked top-k without the (Q, G) matrix, against the dense two-step paths.

    python -m pytest benchmarks/test_bench_rerank_sparse.py --benchmark-json=bench.json
    python benchmarks/report.py bench.json

Providers, per shape (Q x G, D features, float32, euclidean, k1 20, k2 6, lambda 0.3, native cpu backend):
    rerank-eval      rf.evaluate_features(..., rerank=dict(k1=20, k2=6, lambda_value=0.3))
    dense-eval       rf.evaluate(rf.re_ranking(q, g, ...), ...): the (Q, G) re-ranked matrix, then evaluation
    rerank-top100    rf.re_ranking(q, g, ..., topk=100)
    dense-top100     rf.re_ranking(q, g, ...) then a stable argsort of each row, first 100
    plain-eval       rf.evaluate_features(...) without re-ranking (what re-ranking adds on top)
The dense providers are recorded as "reference" (report.py's speedup column: dense time / this time).
peak MiB: the memory one call needs beyond the inputs (benchmarks/conftest.py: sampled RSS).

Shapes: Q 500 x G 3,000, D 256 by default (seconds, pytest-benchmark rounds). At scale one call per provider
(test_one_call_at_scale: time, the call's extra memory and the process's peak RSS, printed and recorded),
behind switches (the coordinator's runs, quiet machine):
    REIDFAST_BENCH_G100K=1   Q 3,368 x G 100,000, D 256: a k-NN pass over 103k x 103k distances per call
    REIDFAST_BENCH_MSMT17=1  Q 11,659 x G 82,161, D 2048 (REIDFAST_BENCH_MSMT17_DIM to change): plain-eval, rerank-eval, rerank-top100, then
                             dense-eval (the 3.6 GiB (Q, G) matrix; ~10 GB of RAM), in that order
Features: benchmarks/test_bench_evaluate_features.py's make_features (Market-like identities, distractors).
"""
from __future__ import annotations

import os
import resource
import time

import numpy as np
import pytest

import reidfast
from conftest import device_label, fast_backends, peak_memory_bytes
from test_bench_evaluate_features import G100K, MSMT17, make_features

RERANK = dict(k1=20, k2=6, lambda_value=0.3)
SMALL = dict(num_query=500, num_gallery=3000, num_ids=150, num_cams=6, num_distractors=500)
# MSMT17's depth: 2048 by default (a ResNet-50 feature); REIDFAST_BENCH_MSMT17_DIM=256 makes the k-NN pass over
# 93,820 items 8x cheaper (about 35 s instead of 4-5 min per re-ranked call on a 2-core CPU).
MSMT17_DIM = int(os.environ.get("REIDFAST_BENCH_MSMT17_DIM", "2048"))
SHAPES = {"small": (SMALL, 256, None), "g100k": (G100K, 256, "REIDFAST_BENCH_G100K"),
          "msmt17": (MSMT17, MSMT17_DIM, "REIDFAST_BENCH_MSMT17")}  # (sizes, D, switch)
PROVIDERS = ["rerank-eval", "dense-eval", "rerank-top100", "dense-top100", "plain-eval"]
NATIVE = "cpu" in fast_backends("cpu")


def _cases():
    for provider in PROVIDERS:
        yield pytest.param("small", provider, id=f"small-d256-{provider}",
                           marks=[pytest.mark.skipif(not NATIVE, reason="native module not built")])


def _scale_cases():
    for name, providers in (("g100k", PROVIDERS), ("msmt17", ["plain-eval", "rerank-eval", "rerank-top100", "dense-eval"])):
        switch = SHAPES[name][2]
        marks = [pytest.mark.skipif(os.environ.get(switch) != "1" or not NATIVE, reason=f"set {switch}=1 (minutes a call)")]
        for provider in providers:
            yield pytest.param(name, provider, id=f"{name}-{provider}", marks=marks)


@pytest.fixture(scope="module")
def problems():
    cache = {}

    def get(name: str):
        if name not in cache:
            cache.clear()  # one problem in memory at a time
            sizes, dim, _ = SHAPES[name]
            query, gallery, *labels = make_features(**sizes, dim=dim)
            cache[name] = (query.numpy(), gallery.numpy(), *labels)
        return cache[name]

    return get


def _function(provider: str, query, gallery, labels):
    if provider == "rerank-eval":
        return lambda: reidfast.evaluate_features(query, gallery, *labels, rerank=RERANK)
    if provider == "dense-eval":
        return lambda: reidfast.evaluate(reidfast.re_ranking(query, gallery, **RERANK), *labels)
    if provider == "rerank-top100":
        return lambda: reidfast.re_ranking(query, gallery, **RERANK, topk=100)
    if provider == "dense-top100":
        def dense_top100():
            distances = reidfast.re_ranking(query, gallery, **RERANK)
            order = np.argsort(distances, axis=1, kind="stable")[:, :100]
            return np.take_along_axis(distances, order, axis=1), order
        return dense_top100
    return lambda: reidfast.evaluate_features(query, gallery, *labels)


@pytest.mark.parametrize("name,provider", list(_cases()))
def test_rerank_sparse(run_benchmark, problems, name, provider):
    query, gallery, *labels = problems(name)
    shape = f"{query.shape[0]}x{gallery.shape[0]} d{query.shape[1]} k1=20 k2=6 ({name})"
    op = "re_ranking top-100" if provider.endswith("top100") else "re-ranked evaluation"
    recorded = "reference" if provider.startswith("dense") else provider  # report.py's speedup baseline
    run_benchmark(op, recorded, "cpu", shape, _function(provider, query, gallery, labels))


def _peak_rss_bytes() -> int:
    """The process's high-water resident set size (VmHWM)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.parametrize("name,provider", list(_scale_cases()))
def test_one_call_at_scale(benchmark, problems, name, provider):
    """One call: time, the call's extra memory, the process's peak RSS so far (dense-eval, which holds the
    (Q, G) matrix, runs last at MSMT17 scale)."""
    query, gallery, *labels = problems(name)
    function = _function(provider, query, gallery, labels)
    measured = {}

    def call():
        start = time.perf_counter()
        result = function()
        measured["seconds"] = time.perf_counter() - start
        return result

    def measure():
        measured["extra_bytes"] = peak_memory_bytes(call, "cpu")

    benchmark.pedantic(measure, rounds=1, iterations=1, warmup_rounds=0)
    shape = f"{query.shape[0]}x{gallery.shape[0]} d{query.shape[1]} k1=20 k2=6 ({name})"
    benchmark.extra_info.update(
        op="re_ranking top-100" if provider.endswith("top100") else "re-ranked evaluation",
        provider="reference" if provider.startswith("dense") else provider, device=device_label("cpu"), shape=shape,
        peak_memory_bytes=measured["extra_bytes"], process_peak_rss_bytes=_peak_rss_bytes(),
        call_seconds=measured["seconds"],
    )
    print(f"\n{shape} {provider}: {measured['seconds']:.1f} s, extra {measured['extra_bytes'] / 2**30:.2f} GiB, "
          f"process peak RSS {_peak_rss_bytes() / 2**30:.2f} GiB")
