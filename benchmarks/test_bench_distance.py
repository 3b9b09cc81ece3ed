"""Pairwise distance: every usable backend vs the reference (addmm formula), torch.cdist and a bare x @ y.T.

    python -m pytest benchmarks/test_bench_distance.py --benchmark-json=bench.json
    python benchmarks/report.py bench.json

Sizes: REIDFAST_BENCH_SIZES="N,M,D;N,M,D" (default: a CPU-sized sweep, or the GPU sweep on CUDA).
On the CPU, "cpu" is the backend's default product path (the widest fused SIMD micro-kernel the CPU has), and
"cpu[avx2]" (where AVX-512 is the default) and "cpu[blas]" the same backend forced onto its other paths
(REIDFAST_CPU_GEMM=avx2|blas; blas: torch.mm + epilogue), so both ISA paths are timed in one run.
"""
from __future__ import annotations

import contextlib
import os

import pytest
import torch

import reidfast
from conftest import DEVICES, fast_backends
from reidfast.ops.distance import CPU_GEMM_ENV, fused_cpu_kernels

def _with_cpu_paths(providers: list[str]) -> list[str]:
    """Adds the CPU backend's other product paths as their own providers ("cpu[avx2]", "cpu[blas]") where the
    default ("cpu") is a fused kernel."""
    if "cpu" not in providers or not fused_cpu_kernels():
        return providers
    return providers + [f"cpu[{kernel}]" for kernel in fused_cpu_kernels()[1:]] + ["cpu[blas]"]


@contextlib.contextmanager
def use_provider(provider: str):
    """use_backend(provider), with "cpu[PATH]" = the cpu backend on product path PATH (avx512, avx2, blas)."""
    if not provider.startswith("cpu["):
        with reidfast.use_backend(provider):
            yield
        return
    previous = os.environ.get(CPU_GEMM_ENV)
    os.environ[CPU_GEMM_ENV] = provider[len("cpu["):-1]
    try:
        with reidfast.use_backend("cpu"):
            yield
    finally:
        if previous is None:
            del os.environ[CPU_GEMM_ENV]
        else:
            os.environ[CPU_GEMM_ENV] = previous

DEFAULT_SIZES = {"cpu": "2048,2048,256;4096,4096,256;2048,2048,2048", "cuda": "8192,8192,2048;16384,16384,2048"}


def _sizes(device: str) -> list[tuple[int, int, int]]:
    spec = os.environ.get("REIDFAST_BENCH_SIZES", DEFAULT_SIZES[device])
    return [tuple(int(v) for v in item.split(",")) for item in spec.split(";") if item.strip()]


def _cases():
    for device in DEVICES:
        providers = _with_cpu_paths(fast_backends(device)) + ["reference", "torch.cdist", "matmul"]
        if device == "cpu" and "triton" in providers:
            providers.remove("triton")  # the interpreter is a correctness tool, not a fast path
        for size in _sizes(device):
            for dtype in (torch.float32,) + ((torch.float16,) if device == "cuda" else ()):
                for provider in providers:
                    yield pytest.param(device, size, dtype, provider, id=f"{device}-{'x'.join(map(str, size))}-{str(dtype)[6:]}-{provider}")


@pytest.mark.parametrize("device,size,dtype,provider", list(_cases()))
def test_pairwise_distance(run_benchmark, device, size, dtype, provider):
    n, m, dim = size
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=generator).to(device=device, dtype=dtype)
    y = torch.randn(m, dim, generator=generator).to(device=device, dtype=dtype)
    if provider == "torch.cdist":
        function = lambda: torch.cdist(x.float(), y.float())  # noqa: E731
    elif provider == "matmul":  # the floor: the product alone, no norms, no epilogue
        function = lambda: x @ y.T  # noqa: E731
    else:
        def function():
            with use_provider(provider):
                return reidfast.pairwise_distance(x, y, metric="euclidean")
    run_benchmark("pairwise_distance[euclidean]", provider, device, f"{n}x{m}x{dim} {str(dtype)[6:]}", function)


TOPK_SIZES = {"cpu": "4096,4096,256;16384,16384,256;4096,4096,2048", "cuda": "16384,16384,2048;65536,16384,256"}
TOPK_K = 20


def _topk_sizes(device: str) -> list[tuple[int, int, int]]:
    spec = os.environ.get("REIDFAST_BENCH_TOPK_SIZES", TOPK_SIZES[device])
    return [tuple(int(v) for v in item.split(",")) for item in spec.split(";") if item.strip()]


def _topk_cases():
    try:
        import faiss  # noqa: F401

        has_faiss = True
    except ImportError:
        has_faiss = False
    for device in DEVICES:
        providers = _with_cpu_paths([p for p in fast_backends(device) if not (device == "cpu" and p == "triton")])
        providers += ["reference", "cdist+topk", "matmul"] + (["faiss.IndexFlatL2"] if has_faiss and device == "cpu" else [])
        for size in _topk_sizes(device):
            for provider in providers:
                yield pytest.param(device, size, provider, id=f"{device}-{'x'.join(map(str, size))}-{provider}")


@pytest.mark.parametrize("device,size,provider", list(_topk_cases()))
def test_topk_distance(run_benchmark, device, size, provider):
    """k = 20 nearest per row (euclidean). The reference and cdist+topk materialise the full N x M matrix."""
    n, m, dim = size
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=generator).to(device)
    y = torch.randn(m, dim, generator=generator).to(device)
    if provider == "cdist+topk":
        function = lambda: torch.topk(torch.cdist(x, y), TOPK_K, dim=1, largest=False)  # noqa: E731
    elif provider == "matmul":
        function = lambda: x @ y.T  # noqa: E731
    elif provider == "faiss.IndexFlatL2":
        import faiss

        index = faiss.IndexFlatL2(dim)
        index.add(y.numpy())
        queries = x.numpy()
        function = lambda: index.search(queries, TOPK_K)  # noqa: E731
    else:
        def function():
            with use_provider(provider):
                return reidfast.topk_distance(x, y, k=TOPK_K)
    run_benchmark(f"topk_distance[k={TOPK_K}]", provider, device, f"{n}x{m}x{dim}", function)
