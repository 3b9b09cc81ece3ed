"""The Triton kernels compiled as a card would compile them (sm_90 cubin, in a process without
TRITON_INTERPRET): the other tests run them in the interpreter, which accepts constructs the compiler rejects.
Their compiled IR must do all address arithmetic that involves a runtime size or stride in 64 bits (Triton
types integer arguments below 2**31 as i32, so `rows * stride` wraps once N * D or N * M reaches 2**31).
Also: their autotuning keys name real arguments, and are bucketed."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton

import reidfast
from reidfast.kernels.triton import common, distance, topk, triplet

_COMPILE_SCRIPT = r'''
import sys
from pathlib import Path

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from reidfast.kernels.triton import distance, rank_count, topk, triplet, triplet_backward

out_dir = Path(sys.argv[1])


@triton.jit
def planted_32bit_offsets_kernel(x_ptr, out_ptr, n, row_stride, BLOCK: tl.constexpr):
    """What the audit must catch: rows * row_stride in int32."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    values = tl.load(x_ptr + rows * row_stride, mask=rows < n, other=0.0)
    tl.store(out_ptr + rows, values, mask=rows < n)


def compile_kernel(name, kernel, signature, constants):
    signature = dict(signature, **{key: "constexpr" for key in constants})
    compiled = triton.compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32))
    assert compiled.asm["cubin"], (kernel, signature, constants)
    (out_dir / (name + ".ttir")).write_text(compiled.asm["ttir"])


ints = lambda *names: {name: "i32" for name in names}
compile_kernel("planted", planted_32bit_offsets_kernel, {"x_ptr": "*fp32", "out_ptr": "*fp32", **ints("n", "row_stride")},
               dict(BLOCK=64))
for dtype, precision in (("fp32", "ieee"), ("fp32", "tf32"), ("fp16", "ieee"), ("bf16", "ieee")):
    tag = dtype + "_" + precision
    compile_kernel("distance_" + tag, distance._pairwise_distance_kernel,
                   {"x_ptr": "*" + dtype, "y_ptr": "*" + dtype, "out_ptr": "*fp32",
                    **ints("n", "m", "dim", "x_row_stride", "y_row_stride")},
                   dict(METRIC=0, SAME_INPUT=False, FP64=False, INPUT_PRECISION=precision,
                        BLOCK_N=64, BLOCK_M=64, BLOCK_D=32))
    compile_kernel("topk_" + tag, topk._topk_distance_kernel,
                   {"x_ptr": "*" + dtype, "y_ptr": "*" + dtype, "values_ptr": "*fp32", "indices_ptr": "*i64",
                    **ints("n", "m", "dim", "k", "x_row_stride", "y_row_stride", "tune_n", "tune_m", "tune_dim")},
                   dict(METRIC=2, SAME_INPUT=True, EXCLUDE_SELF=True, FP64=False, INPUT_PRECISION=precision,
                        SWAP_BY_PERMUTE=False, K_PAD=32, BLOCK_N=32, BLOCK_M=64, BLOCK_D=32))
    compile_kernel("rankcount_" + tag, rank_count._rank_count_kernel,
                   {"x_ptr": "*" + dtype, "y_ptr": "*" + dtype, **ints("n", "m", "dim", "x_row_stride", "y_row_stride", "col0"),
                    "offsets_ptr": "*i64", "pivot_distance_ptr": "*fp32", "pivot_index_ptr": "*i32",
                    "row_labels_ptr": "*i64", "item_labels_ptr": "*i64", "groups_ptr": "*i64", "histogram_ptr": "*i64",
                    "nan_count_ptr": "*i64", **ints("num_groups", "search_steps")},
                   dict(METRIC=0, HAS_GROUPS=True, FP64=False, INPUT_PRECISION=precision,
                        BLOCK_N=64, BLOCK_M=64, BLOCK_D=32))
    compile_kernel("mine_" + tag, triplet._batch_hard_mine_kernel,
                   {"anchors_ptr": "*" + dtype, "candidates_ptr": "*" + dtype, "anchor_labels_ptr": "*i64",
                    "candidate_labels_ptr": "*i64", "anchor_index_ptr": "*i64", "dist_ap_ptr": "*fp32",
                    "dist_an_ptr": "*fp32", "positive_index_ptr": "*i64", "negative_index_ptr": "*i64",
                    **ints("num_anchors", "num_candidates", "dim", "anchor_row_stride", "candidate_row_stride",
                           "tune_anchors", "tune_candidates", "tune_dim")},
                   dict(METRIC=0, SAME_INPUT=True, FP64=False, INPUT_PRECISION=precision, UPCAST_DOT=False,
                        BLOCK_B=64, BLOCK_C=64, BLOCK_D=32))
# The configurations tests/test_triplet_backward_kernels.py compiles too (Triton's cache serves the second):
# cosine with a separate candidate gradient, euclidean on the anchors alone.
for dtype, metric, flag in (("fp32", 2, True), ("bf16", 0, False)):
    compile_kernel(f"backward_pairs_{metric}", triplet_backward._pair_coefficients_kernel,
                   {"anchors_ptr": "*" + dtype, "candidates_ptr": "*" + dtype, "positive_ptr": "*i64",
                    "negative_ptr": "*i64", "dist_ap_ptr": "*fp32", "dist_an_ptr": "*fp32", "grad_ap_ptr": "*fp32",
                    "grad_an_ptr": "*fp32", "coefficients_ptr": "*fp32", "grad_anchors_ptr": "*" + dtype,
                    **ints("num_anchors", "dim", "anchor_row_stride", "candidate_row_stride", "grad_row_stride")},
                   dict(METRIC=metric, FP64=False, WRITE_ANCHOR_GRAD=flag, BLOCK_B=32, BLOCK_D=128))
    compile_kernel(f"backward_rows_{metric}", triplet_backward._chosen_rows_kernel,
                   {"anchors_ptr": "*" + dtype, "rows_ptr": "*" + dtype, "positive_ptr": "*i64", "negative_ptr": "*i64",
                    "coefficients_ptr": "*fp32", "entry_order_ptr": "*i64", "entry_offsets_ptr": "*i64",
                    "grad_ptr": "*" + dtype, **ints("num_anchors", "dim", "anchor_row_stride", "row_stride", "grad_row_stride")},
                   dict(METRIC=metric, FP64=False, ANCHOR_PART=flag, BLOCK_E=4, BLOCK_D=256))
print("compiled")
'''

_DEFINITION = re.compile(r"^\s*(%[\w.$-]+)(?::\d+)? = (\S+)(.*)$")
_VALUE = re.compile(r"%[\w.$-]+")


def narrow_address_products(ttir: str) -> list[str]:
    """The 32-bit integer multiplications that involve a kernel argument (a runtime size or stride) and feed
    an address (a tt.addptr offset), as TTIR lines. program_id * BLOCK is fine (no argument), so is
    rows.to(int64) * stride (64-bit); rows * stride in i32 is not."""
    header = re.search(r"tt\.func public @\w+\((.*?)\) attributes", ttir, re.S)
    arguments = set(re.findall(r"(%[\w.$-]+): i(?:32|64)", header.group(1)))
    definitions: dict[str, tuple[str, list[str], str]] = {}
    address_offsets = []
    for line in ttir.splitlines():
        match = _DEFINITION.match(line)
        if not match:
            continue
        name, op, rest = match.groups()
        operands = _VALUE.findall(rest.split(" : ")[0].split(" loc(")[0])
        definitions[name] = (op, operands, line.strip())
        if op == "tt.addptr":
            address_offsets.append(operands[1])

    def slice_of(value: str) -> set[str]:
        seen, stack = set(), [value.split("#")[0]]
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            if current in definitions:
                stack.extend(operand.split("#")[0] for operand in definitions[current][1])
        return seen

    bad = []
    for offset in address_offsets:
        for value in slice_of(offset):
            op, operands, line = definitions.get(value, ("", [], ""))
            is_narrow = re.search(r":\s*(tensor<[\dx]*xi32>|i32)\s+loc", line) is not None
            if op == "arith.muli" and is_narrow and any(slice_of(o) & arguments for o in operands):
                bad.append(line)
    return sorted(set(bad))


@pytest.fixture(scope="module")
def compiled_ttir(tmp_path_factory) -> dict[str, str]:
    """TTIR of every Triton kernel (and of one planted 32-bit kernel), compiled for sm_90 without a card."""
    if torch.cuda.is_available():
        pytest.skip("with a card the kernels run (and compile) in the other tests")
    pytest.importorskip("triton.backends.nvidia")
    out_dir = tmp_path_factory.mktemp("ttir")
    script = out_dir / "compile_kernels.py"  # a file: triton.jit reads the kernels' source
    script.write_text(_COMPILE_SCRIPT)
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # the script lives in a temporary folder: point it at the reidfast this test imported
    package_root = str(Path(reidfast.__file__).resolve().parents[1])
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, environment.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, str(script), str(out_dir)], env=environment, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]
    return {path.stem: path.read_text() for path in Path(out_dir).glob("*.ttir")}


def test_kernels_compile_for_sm90_without_a_card(compiled_ttir):
    kernels = {name.split("_")[0] for name in compiled_ttir}
    assert kernels == {"planted", "distance", "topk", "rankcount", "mine", "backward"}, sorted(compiled_ttir)


def test_address_arithmetic_with_sizes_and_strides_is_64_bit(compiled_ttir):
    for name, ttir in sorted(compiled_ttir.items()):
        if name != "planted":
            assert narrow_address_products(ttir) == [], f"{name}: 32-bit offset products"


def test_the_offset_audit_catches_a_32_bit_row_times_stride(compiled_ttir):
    found = narrow_address_products(compiled_ttir["planted"])
    assert len(found) == 1 and "arith.muli" in found[0], found


def test_each_call_tunes_over_its_dot_paths_configs():
    float32, float16 = torch.empty(1, 1), torch.empty(1, 1, dtype=torch.float16)
    for tuned, input_name, by_path in ((triplet._batch_hard_mine_tuned, "anchors_ptr", triplet.MINE_CONFIGS_BY_PATH),
                                       (topk._tuned_kernel(16), "x_ptr", topk.configs_by_path(16))):
        prune = tuned.early_config_prune
        for inputs, precision, path in ((float32, "ieee", "fma"), (float32, "tf32", "mma"), (float16, "ieee", "mma")):
            kept = prune(tuned.configs, {input_name: inputs}, INPUT_PRECISION=precision)
            assert [str(c) for c in kept] == [str(c) for c in by_path[path]], (input_name, precision)
        assert by_path["fma"] != by_path["mma"]


def test_tuning_bucket_is_the_next_power_of_two():
    assert [common.tuning_bucket(n) for n in (0, 1, 2, 3, 16, 17, 256, 257, 4096)] == [1, 1, 2, 4, 16, 32, 256, 512, 4096]


def test_autotuning_keys_are_bucketed_arguments():
    """A new batch or gallery size must not re-benchmark every config: the keys are the tune_* arguments
    (tuning buckets), which the launchers pass, not the exact sizes; and the input precision, which picks the
    dot path's configs (float32 at TF32 and at IEEE precision must not share a tuned config)."""
    for tuned, keys in ((topk._tuned_kernel(16), ["tune_n", "tune_m", "tune_dim", "INPUT_PRECISION"]),
                        (triplet._batch_hard_mine_tuned,
                         ["tune_anchors", "tune_candidates", "tune_dim", "INPUT_PRECISION"])):
        assert list(tuned.keys) == keys
        assert set(keys) <= set(tuned.arg_names)


# ---- resources of the autotuning space, compiled for sm_90 ---------------------------------------------------
# Every config the autotuners may pick is compiled for sm_90 (no card needed) and its cubin read back with
# cuobjdump: registers, stack and local memory (spills), and Triton's shared-memory need. A config that spills
# or cannot launch (over 227 KiB of shared memory per block) does not belong in the tuning space.
# `python tests/test_triton_compile.py` prints the table of benchmarks/RESULTS.md ("Triton kernel resources").

MAX_SHARED_PER_BLOCK = 227 * 1024  # sm_90, opted in
# The inputs each dot path (common.dot_path) compiles for; bfloat16 takes float16's path and registers.
PATH_PRECISIONS = {"fma": (("fp32", "ieee"),), "mma": (("fp32", "tf32"), ("fp16", "ieee"))}
RESOURCE_PRECISIONS = PATH_PRECISIONS["fma"] + PATH_PRECISIONS["mma"]
TOPK_K_PADS = (16, 32, 64, 128)  # topk.MAX_K = 128; K_PAD < 16 keeps fewer keys in the same blocks as 16

_RESOURCE_SCRIPT = r"""
import json, os, re, subprocess, sys, tempfile
from concurrent.futures import ProcessPoolExecutor

def measure(job):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from reidfast.kernels.triton import topk, triplet
    ints = lambda *names: {name: "i32" for name in names}
    dtype, precision = job["dtype"], job["precision"]
    common = dict(METRIC=0, FP64=False, INPUT_PRECISION=precision, **job["blocks"])
    if job["kernel"] == "rankcount":
        from reidfast.kernels.triton import rank_count
        kernel = rank_count._rank_count_kernel
        signature = {"x_ptr": "*" + dtype, "y_ptr": "*" + dtype, **ints("n", "m", "dim", "x_row_stride", "y_row_stride", "col0"),
                     "offsets_ptr": "*i64", "pivot_distance_ptr": "*fp32", "pivot_index_ptr": "*i32", "row_labels_ptr": "*i64",
                     "item_labels_ptr": "*i64", "groups_ptr": "*i64", "histogram_ptr": "*i64", "nan_count_ptr": "*i64",
                     **ints("num_groups", "search_steps")}
        constants = dict(common, HAS_GROUPS=True)
    elif job["kernel"] == "topk":
        kernel = topk._topk_distance_kernel
        signature = {"x_ptr": "*" + dtype, "y_ptr": "*" + dtype, "values_ptr": "*fp32", "indices_ptr": "*i64",
                     **ints("n", "m", "dim", "k", "x_row_stride", "y_row_stride", "tune_n", "tune_m", "tune_dim")}
        constants = dict(common, SAME_INPUT=False, EXCLUDE_SELF=False, SWAP_BY_PERMUTE=False, K_PAD=job["k_pad"])
    else:
        kernel = triplet._batch_hard_mine_kernel
        signature = {"anchors_ptr": "*" + dtype, "candidates_ptr": "*" + dtype, "anchor_labels_ptr": "*i64",
                     "candidate_labels_ptr": "*i64", "anchor_index_ptr": "*i64", "dist_ap_ptr": "*fp32",
                     "dist_an_ptr": "*fp32", "positive_index_ptr": "*i64", "negative_index_ptr": "*i64",
                     **ints("num_anchors", "num_candidates", "dim", "anchor_row_stride", "candidate_row_stride",
                            "tune_anchors", "tune_candidates", "tune_dim")}
        constants = dict(common, SAME_INPUT=False, UPCAST_DOT=False)
    signature = dict(signature, **{name: "constexpr" for name in constants})
    compiled = triton.compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=job["num_warps"], num_stages=job["num_stages"]))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([sys.argv[1], "--dump-resource-usage", cubin.name], capture_output=True, text=True,
                               check=True).stdout
    registers, stack, local = map(int, re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", usage).groups())
    return dict(job, registers=registers, stack=stack, local=local, shared=compiled.metadata.shared)

with ProcessPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
    for result in pool.map(measure, json.loads(sys.argv[2])):
        print(json.dumps(result), flush=True)
"""


def _config_jobs(kernel: str, configs_by_path: dict, k_pad: int = 0) -> list[dict]:
    return [dict(kernel=kernel, k_pad=k_pad, blocks=dict(config.kwargs), num_warps=config.num_warps,
                 num_stages=config.num_stages, dtype=dtype, precision=precision)
            for path, configs in configs_by_path.items() for config in configs
            for dtype, precision in PATH_PRECISIONS[path]]


def tuning_space_jobs() -> list[dict]:
    """Every (config, input precision) the autotuners may compile: mining, and top-k at each K_PAD, each
    config on the dot path(s) it serves."""
    jobs = _config_jobs("mine", triplet.MINE_CONFIGS_BY_PATH)
    for k_pad in TOPK_K_PADS:
        jobs += _config_jobs("topk", topk.configs_by_path(k_pad), k_pad)
    # rank counting is not tuned: pairwise_distance's tile (distance.tile_options), Triton's default warps/stages
    options = distance.tile_options(torch.empty(0, 0))
    fixed = triton.Config(dict(BLOCK_N=options.block_n, BLOCK_M=options.block_m, BLOCK_D=options.block_d),
                          num_warps=options.num_warps, num_stages=options.num_stages)
    return jobs + _config_jobs("rankcount", {"fma": [fixed], "mma": [fixed]})


def measure_resources(jobs: list[dict], cuobjdump: str, progress=None) -> list[dict]:
    """Compiles the jobs in a process without TRITON_INTERPRET; `progress` gets each result as it comes."""
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    measured = []
    with subprocess.Popen([sys.executable, "-c", _RESOURCE_SCRIPT, cuobjdump, json.dumps(jobs)], env=environment,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=Path(__file__).resolve().parents[1]) as process:
        for line in process.stdout:
            if line.startswith("{"):
                measured.append(json.loads(line))
                if progress is not None:
                    progress(measured[-1])
        errors = process.stderr.read()
    assert process.returncode == 0, errors[-3000:]
    return measured


# Stated exceptions (bytes of stack a kernel may spill): the rank counting kernel must run pairwise_distance's
# tile and warps (its distances are that op's bit for bit), 64 x 64 x 32 at 4 warps, where its search epilogue
# spills 320 B on the FMA path (float32 IEEE; the cuda backend's input on a card) and 32-56 B on the tensor-core
# paths. At 8 warps it spills 16 B (FMA) and nothing else, and pairwise_distance none: a change for both kernels
# together, once a card benchmark backs it.
STACK_ALLOWANCE = {"rankcount": 512}


def fits(measured: dict) -> bool:
    """No spills (beyond a stated allowance) or local arrays, and launchable: shared memory within a block's limit."""
    allowance = STACK_ALLOWANCE.get(measured.get("kernel"), 0)
    return measured["stack"] <= allowance and measured["local"] == 0 and measured["shared"] <= MAX_SHARED_PER_BLOCK


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a card the autotuner's own runs show the resources")
def test_every_tuning_config_fits_sm90_without_spills():
    pytest.importorskip("triton.backends.nvidia")
    from test_cuda_resources import find_cuobjdump

    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        pytest.skip("no cuobjdump (PATH, or triton's backends/nvidia/bin)")
    measured = measure_resources(tuning_space_jobs(), cuobjdump)
    assert len(measured) == len(tuning_space_jobs())
    misfits = [m for m in measured if not fits(m)]
    assert not misfits, "\n".join(json.dumps(m) for m in misfits)


def test_fits_rejects_spills_local_arrays_and_oversized_shared_memory():
    good = dict(registers=255, stack=0, local=0, shared=MAX_SHARED_PER_BLOCK)
    assert fits(good)
    for wrong in (dict(stack=8), dict(local=4), dict(shared=MAX_SHARED_PER_BLOCK + 1)):
        assert not fits(dict(good, **wrong)), wrong
    allowed = STACK_ALLOWANCE["rankcount"]
    assert fits(dict(good, kernel="rankcount", stack=allowed))
    assert not fits(dict(good, kernel="rankcount", stack=allowed + 8)) and not fits(dict(good, kernel="topk", stack=8))


def resource_table(measured: list[dict]) -> str:
    lines = ["| kernel | K_PAD | blocks | warps, stages | fp32 regs / stack | tf32 regs / stack | fp16 regs / stack "
             "| shared (B, fp16) | kept |", "|---|---|---|---|---|---|---|---|---|"]
    rows: dict = {}
    for m in measured:
        key = (m["kernel"], m["k_pad"], tuple(m["blocks"].values()), m["num_warps"], m["num_stages"])
        rows.setdefault(key, {})[(m["dtype"], m["precision"])] = m
    for (kernel, k_pad, blocks, warps, stages), by_precision in rows.items():
        cells = [f"{by_precision[p]['registers']} / {by_precision[p]['stack']}" if p in by_precision else "-"
                 for p in RESOURCE_PRECISIONS]
        fp16 = by_precision.get(("fp16", "ieee"), {})
        kept = "yes" if all(fits(m) for m in by_precision.values()) else "dropped"
        lines.append(f"| {kernel} | {k_pad or '-'} | {' x '.join(map(str, blocks))} | {warps}, {stages} | "
                     f"{' | '.join(cells)} | {fp16.get('shared', '-')} | {kept} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from test_cuda_resources import find_cuobjdump

    print(resource_table(measure_resources(tuning_space_jobs(), find_cuobjdump(),
                                           progress=lambda m: print(json.dumps(m), file=sys.stderr, flush=True))))
