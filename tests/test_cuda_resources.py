"""What the compiled CUDA kernels cost a card, known without one: every kernel of csrc/cuda compiled for sm_80
and sm_90 (one nvcc call per .cu file, in parallel, `-fatbin` for both archs), its registers, stack, local
and static shared memory read back with `cuobjdump --dump-resource-usage`, and the theoretical occupancy of
its launch configuration by the CUDA occupancy rules. Asserted: no stack or local memory anywhere (spills
and local arrays both live there), and occupancy at or above the floor stated per kernel below.

    python tests/test_cuda_resources.py     # the table for benchmarks/RESULTS.md ("CUDA kernel resources")

Skipped, with the reason, where nvcc or cuobjdump (PATH, or the one the triton wheel ships) is missing.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
ARCHS = (80, 90)
# CMakeLists.txt's CUDA flags that can change code generation (-lineinfo does not).
NVCC_FLAGS = ("-std=c++17", "--expt-relaxed-constexpr", "-O3")

# The occupancy rules of compute capability 8.0 and 9.0 (CUDA C Programming Guide, "Compute capabilities";
# the occupancy calculator's register and shared-memory allocation granularities).
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
REGISTERS_PER_SM = 65536
REGISTER_UNIT = 256  # registers are allocated per warp in units of 256
SHARED_PER_SM = {80: 164 * 1024, 90: 228 * 1024}
SHARED_UNIT = 128
# Shared memory the runtime reserves per block. sm_90 cubins already count it in SHARED (cuobjdump reports
# 1 KiB more for the same kernel at sm_90 than at sm_80), so it is added for sm_80 only.
RESERVED_SHARED = {80: 1024, 90: 0}


@dataclasses.dataclass(frozen=True)
class Launch:
    """A kernel's launch configuration and its stated occupancy floors (fraction of 64 warps per SM)."""

    threads: int
    floor: float  # float32 accumulation (float32, float16, bfloat16 inputs)
    floor_fp64: float = 0.0  # float64 instantiations; 0: the kernel has none
    dynamic_shared: object = None  # callable(entry_bytes) -> bytes, or None for none


TOPK_K = 100  # the k at which the top-k kernels' floors are stated (their shared memory grows with k)
TOPK_MAX_K = 256  # csrc/cuda/topk.h kTopkMaxK: must still launch (>= 1 block per SM)


def _topk_scan_shared(entry_bytes: int, k: int = TOPK_K) -> int:  # topk.cu scan_shared_bytes
    return (64 * 64 + 64 + 8 * k) * entry_bytes + 64 * 4


def _topk_merge_shared(entry_bytes: int, k: int = TOPK_K) -> int:  # topk.cu merge_shared_bytes
    return 8 * (64 + k + 1) * entry_bytes


# Floors: what the register budget in the sources (__launch_bounds__ minimum blocks) guarantees; float64
# tiles keep ~140-210 registers per thread, so one 256-thread block (8 of 64 warps) per SM.
KERNELS = {
    "pairwise_distance_kernel": Launch(256, floor=3 * 8 / 64, floor_fp64=8 / 64),
    "topk_scan_kernel": Launch(256, floor=2 * 8 / 64, floor_fp64=8 / 64, dynamic_shared=_topk_scan_shared),
    "topk_merge_kernel": Launch(256, floor=4 * 8 / 64, floor_fp64=4 * 8 / 64, dynamic_shared=_topk_merge_shared),
    "batch_hard_mine_kernel": Launch(256, floor=2 * 8 / 64, floor_fp64=8 / 64),
    "reduce_chunks_kernel": Launch(256, floor=6 * 8 / 64, floor_fp64=5 * 8 / 64),
    "fill_empty_kernel": Launch(256, floor=1.0, floor_fp64=1.0),
    "pair_coefficients_kernel": Launch(256, floor=5 * 8 / 64, floor_fp64=4 * 8 / 64),
    "chosen_rows_kernel": Launch(256, floor=5 * 8 / 64, floor_fp64=4 * 8 / 64),
    "rerank_jaccard_kernel": Launch(256, floor=4 * 8 / 64),
    "rank_count_kernel": Launch(256, floor=2 * 8 / 64, floor_fp64=8 / 64),
}


@dataclasses.dataclass(frozen=True)
class KernelBuild:
    arch: int
    name: str  # demangled, without the namespaces
    registers: int
    stack: int
    shared: int  # static shared memory, bytes
    local: int

    @property
    def kernel(self) -> str:
        return next((kernel for kernel in KERNELS if kernel in self.name), self.name)

    @property
    def fp64(self) -> bool:
        return "double" in self.name

    def dynamic_shared(self, k: int = TOPK_K) -> int:
        launch = KERNELS[self.kernel]
        if launch.dynamic_shared is None:
            return 0
        return launch.dynamic_shared(16 if self.fp64 else 8, k)

    def occupancy(self, k: int = TOPK_K) -> float:
        return occupancy(self.arch, KERNELS[self.kernel].threads, self.registers,
                         self.shared + self.dynamic_shared(k))


def occupancy(arch: int, threads: int, registers: int, shared_bytes: int) -> float:
    """Theoretical occupancy (resident warps / 64) of `threads`-thread blocks using `registers` per thread and
    `shared_bytes` (static + dynamic) per block."""
    warps = math.ceil(threads / 32)
    registers_per_warp = math.ceil(registers * 32 / REGISTER_UNIT) * REGISTER_UNIT
    by_registers = (REGISTERS_PER_SM // registers_per_warp) // warps
    block_shared = math.ceil((shared_bytes + RESERVED_SHARED[arch]) / SHARED_UNIT) * SHARED_UNIT
    by_shared = SHARED_PER_SM[arch] // block_shared if block_shared else MAX_BLOCKS_PER_SM
    blocks = min(MAX_WARPS_PER_SM // warps, MAX_BLOCKS_PER_SM, by_registers, by_shared)
    return blocks * warps / MAX_WARPS_PER_SM


def find_cuobjdump() -> str | None:
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton
    except ImportError:
        return None
    shipped = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(shipped) if shipped.exists() else None


def _demangle(names: list[str]) -> list[str]:
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if tool is None:
        return names
    result = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


_FUNCTION = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_ARCH = re.compile(r"arch = sm_(\d+)")


def parse_resource_usage(text: str) -> list[KernelBuild]:
    """cuobjdump --dump-resource-usage of a fatbin: one KernelBuild per (arch, function)."""
    builds, mangled = [], []
    sections = _ARCH.split(text)  # [preamble, arch, body, arch, body, ...]
    for arch, body in zip(sections[1::2], sections[2::2]):
        for match in _FUNCTION.finditer(body):
            mangled.append(match.group(1))
            builds.append((int(arch), *map(int, match.groups()[1:])))
    names = _demangle(mangled)
    short = [re.sub(r"reidfast::cuda::|\(anonymous namespace\)::|triplet::|\(.*$", "", name) for name in names]
    return [KernelBuild(arch, name.strip(), *numbers) for name, (arch, *numbers) in zip(short, builds)]


def compile_and_measure(nvcc: str, cuobjdump: str) -> list[KernelBuild]:
    """Every csrc/cuda/*.cu for ARCHS, one nvcc process per file, in parallel."""
    gencode = [f"-gencode=arch=compute_{arch},code=sm_{arch}" for arch in ARCHS]
    with tempfile.TemporaryDirectory() as scratch:
        def build(source: Path) -> str:
            fatbin = Path(scratch) / (source.stem + ".fatbin")
            subprocess.run([nvcc, "-fatbin", *NVCC_FLAGS, *gencode, f"-I{ROOT / 'csrc'}", "-o", str(fatbin),
                            str(source)], check=True, capture_output=True, text=True)
            return subprocess.run([cuobjdump, "--dump-resource-usage", str(fatbin)], check=True,
                                  capture_output=True, text=True).stdout

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            outputs = list(pool.map(build, CUDA_SOURCES))
    return [kernel for output in outputs for kernel in parse_resource_usage(output)]


@functools.lru_cache(maxsize=1)
def _tools() -> tuple[str | None, str | None]:
    return shutil.which("nvcc"), find_cuobjdump()


@pytest.fixture(scope="module")
def kernel_builds() -> list[KernelBuild]:
    nvcc, cuobjdump = _tools()
    if nvcc is None:
        pytest.skip("nvcc is not on PATH: the CUDA kernels cannot be compiled here")
    if cuobjdump is None:
        pytest.skip("no cuobjdump (PATH, or triton's backends/nvidia/bin)")
    return compile_and_measure(nvcc, cuobjdump)


def test_every_kernel_is_compiled_for_both_archs_and_known(kernel_builds):
    assert {build.kernel for build in kernel_builds} == set(KERNELS), "a new kernel needs a Launch entry"
    for arch in ARCHS:
        names = sorted(build.name for build in kernel_builds if build.arch == arch)
        assert names == sorted(build.name for build in kernel_builds if build.arch == ARCHS[0]), arch


def test_no_kernel_uses_stack_or_local_memory(kernel_builds):
    offenders = [build for build in kernel_builds if build.stack or build.local]
    assert not offenders, "\n".join(f"sm_{b.arch} {b.name}: stack {b.stack} B, local {b.local} B" for b in offenders)


def test_occupancy_meets_each_kernels_floor(kernel_builds):
    below = []
    for build in kernel_builds:
        launch = KERNELS[build.kernel]
        floor = launch.floor_fp64 if build.fp64 else launch.floor
        assert floor > 0, f"{build.name}: no float64 floor stated"
        if build.occupancy() < floor:
            below.append(f"sm_{build.arch} {build.name}: {build.occupancy():.3f} < {floor:.3f} "
                         f"({build.registers} registers, {build.shared + build.dynamic_shared()} B shared)")
    assert not below, "\n".join(below)


def test_topk_kernels_launch_at_the_largest_k(kernel_builds):
    for build in kernel_builds:
        if build.kernel.startswith("topk_"):
            assert build.occupancy(TOPK_MAX_K) > 0, f"sm_{build.arch} {build.name} cannot launch at k={TOPK_MAX_K}"


def test_occupancy_rules_match_known_configurations():
    """The calculator's numbers for three hand-checked cases, and one that cannot launch."""
    assert occupancy(90, 256, 128, 0) == 0.25  # 4096 registers per warp: 16 warps
    assert occupancy(80, 256, 80, 9216) == 0.375  # 2560 per warp: 25 warps -> 3 blocks
    assert occupancy(90, 256, 32, 100 * 1024) == 0.25  # shared-limited: 2 blocks of 8 warps
    assert occupancy(80, 256, 32, 200 * 1024) == 0.0


def test_parse_resource_usage_reads_every_arch_and_field():
    text = ("Fatbin elf code:\n================\narch = sm_80\n\nResource usage:\n Function _Z3fooPf:\n"
            "  REG:40 STACK:8 SHARED:1024 LOCAL:4 CONSTANT[0]:360 TEXTURE:0\n"
            "Fatbin elf code:\n================\narch = sm_90\n\nResource usage:\n Function _Z3fooPf:\n"
            "  REG:42 STACK:0 SHARED:2048 LOCAL:0 CONSTANT[0]:360\n")
    builds = parse_resource_usage(text)
    assert [(b.arch, b.registers, b.stack, b.shared, b.local) for b in builds] == [(80, 40, 8, 1024, 4),
                                                                                    (90, 42, 0, 2048, 0)]


def markdown_table(builds: list[KernelBuild]) -> str:
    """One row per kernel instantiation: registers / stack / static shared / occupancy, sm_80 and sm_90."""
    rows = {}
    for build in builds:
        rows.setdefault(build.name, {})[build.arch] = build
    lines = ["| kernel | regs 80 / 90 | stack 80 / 90 | static smem 80 / 90 (B) | occupancy 80 / 90 | floor |",
             "|---|---|---|---|---|---|"]
    for name in sorted(rows):
        per_arch = [rows[name][arch] for arch in ARCHS]
        launch = KERNELS[per_arch[0].kernel]
        floor = launch.floor_fp64 if per_arch[0].fp64 else launch.floor
        cells = [" / ".join(str(getattr(b, field)) for b in per_arch) for field in ("registers", "stack", "shared")]
        occupancies = " / ".join(f"{b.occupancy():.1%}" for b in per_arch)
        lines.append(f"| `{name}` | {' | '.join(cells)} | {occupancies} | {floor:.1%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    nvcc, cuobjdump = _tools()
    if nvcc is None or cuobjdump is None:
        sys.exit("needs nvcc and cuobjdump")
    print(markdown_table(compile_and_measure(nvcc, cuobjdump)))
