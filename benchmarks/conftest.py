"""Benchmark fixtures: providers per device, and one-shot peak-memory measurement.

Each benchmark records in `benchmark.extra_info`: op, provider, device (GPU name; CPU model, instruction set
and cores), shape, peak_memory_bytes, and for the CPU the product path of each "cpu" provider (cpu_path) and
the fused paths this CPU has (cpu_paths_available). `python benchmarks/report.py RESULTS.json` turns a
`--benchmark-json` file into ratio tables against the reference measured in the same run.
"""
from __future__ import annotations

import gc
import math
import os
import platform
import threading
import time
from typing import Callable

import pytest
import torch

import reidfast
from reidfast.ops.distance import CPU_GEMM_ENV, fused_cpu_kernels

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def cpu_model_and_isa() -> tuple[str, str]:
    """The CPU's model name and widest vector instruction set ("AVX-512", "AVX2", "no AVX2"), from
    /proc/cpuinfo where there is one."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())  # the first processor's
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2" if flags else "unknown ISA"
    return model, isa


def device_label(device: str) -> str:
    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name()})"
    model, isa = cpu_model_and_isa()
    return f"cpu ({model}, {isa}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def cpu_path(provider: str) -> str | None:
    """The CPU backend's product path a provider runs: "cpu[PATH]" forces one; "cpu" takes REIDFAST_CPU_GEMM
    (default auto: the widest fused kernel, else blas); None for other providers."""
    if provider.startswith("cpu["):
        return provider[len("cpu["):-1]
    if provider != "cpu":
        return None
    requested = os.environ.get(CPU_GEMM_ENV, "auto").strip().lower() or "auto"
    available = fused_cpu_kernels()
    return (available[0] if available else "blas") if requested == "auto" else requested


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


MIN_ROUND_SECONDS = 0.02


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_bytes(function: Callable[[], object], device: str) -> int:
    """Extra memory one call of `function` needs at its peak, beyond what was allocated before it.

    CUDA: torch's allocator peak. CPU: resident set size sampled every 0.2 ms by a thread (large buffers
    are mmap'ed and returned on free, so the sampled RSS follows them); its resolution is a page.
    """
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = function()
        torch.cuda.synchronize()
        del result
        return torch.cuda.max_memory_allocated() - before
    before = _rss_bytes()
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.0002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = function()
        peak = max(peak, _rss_bytes())
    finally:
        done.set()
        sampler.join()
    del result
    return max(0, peak - before)


@pytest.fixture
def run_benchmark(benchmark):
    """run_benchmark(op, provider, device, shape, function): memory once, then pytest-benchmark timing."""

    def run(op: str, provider: str, device: str, shape: str, function: Callable[[], object]) -> object:
        def call() -> object:
            out = function()
            synchronize(device)
            return out

        call()  # warm-up: compilation, autotuning, allocator caches
        started = time.perf_counter()
        call()
        once = time.perf_counter() - started
        # Sub-millisecond calls are timed in batches of >= MIN_ROUND_SECONDS, so one scheduler hiccup or a
        # cold cache after the previous provider does not decide the median.
        iterations = max(1, min(1000, math.ceil(MIN_ROUND_SECONDS / max(once, 1e-7))))
        benchmark.extra_info.update(
            op=op, provider=provider, device=device_label(device), shape=shape,
            peak_memory_bytes=peak_memory_bytes(call, device), iterations_per_round=iterations,
        )
        if device == "cpu" and cpu_path(provider) is not None:
            benchmark.extra_info.update(cpu_path=cpu_path(provider), cpu_paths_available=list(fused_cpu_kernels()))
        return benchmark.pedantic(call, rounds=_rounds(), iterations=iterations, warmup_rounds=1)

    return run


def _rounds() -> int:
    return int(os.environ.get("REIDFAST_BENCH_ROUNDS", "5"))


def fast_backends(device: str) -> list[str]:
    """Backends to time on `device`: never the CUDA emulator (REIDFAST_EMULATE_CUDA=1), a correctness tool."""
    report = reidfast.backends()
    return [n for n in ("cuda", "triton", "cpu") if report[n].available and device in report[n].devices
            and not report[n].details.get("emulated")]
