"""The forward Triton kernels (distance, top-k, batch-hard mining) compiled as a card would compile them
(sm_90 cubin, in a process without TRITON_INTERPRET): the other tests run them in the interpreter, which
accepts constructs the compiler rejects. Also: their autotuning keys name real arguments, and are bucketed."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from reidfast.kernels.triton import common, topk, triplet

_COMPILE_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from reidfast.kernels.triton import distance, topk, triplet

def compile_kernel(kernel, signature, constants):
    signature = dict(signature, **{name: "constexpr" for name in constants})
    compiled = triton.compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32))
    assert compiled.asm["cubin"], (kernel, signature, constants)

ints = lambda *names: {name: "i32" for name in names}
for dtype, precision in (("fp32", "ieee"), ("fp32", "tf32"), ("fp16", "ieee"), ("bf16", "ieee")):
    compile_kernel(distance._pairwise_distance_kernel,
                   {"x_ptr": "*" + dtype, "y_ptr": "*" + dtype, "out_ptr": "*fp32",
                    **ints("n", "m", "dim", "x_row_stride", "y_row_stride")},
                   dict(METRIC=0, SAME_INPUT=False, FP64=False, INPUT_PRECISION=precision, UPCAST_DOT=False,
                        BLOCK_N=64, BLOCK_M=64, BLOCK_D=32))
    compile_kernel(topk._topk_distance_kernel,
                   {"x_ptr": "*" + dtype, "y_ptr": "*" + dtype, "values_ptr": "*fp32", "indices_ptr": "*i64",
                    **ints("n", "m", "dim", "k", "x_row_stride", "y_row_stride", "tune_n", "tune_m", "tune_dim")},
                   dict(METRIC=2, SAME_INPUT=True, EXCLUDE_SELF=True, FP64=False, INPUT_PRECISION=precision,
                        UPCAST_DOT=False, SWAP_BY_PERMUTE=False, K_PAD=32, BLOCK_N=32, BLOCK_M=64, BLOCK_D=32))
    compile_kernel(triplet._batch_hard_mine_kernel,
                   {"anchors_ptr": "*" + dtype, "candidates_ptr": "*" + dtype, "anchor_labels_ptr": "*i64",
                    "candidate_labels_ptr": "*i64", "anchor_index_ptr": "*i64", "dist_ap_ptr": "*fp32",
                    "dist_an_ptr": "*fp32", "positive_index_ptr": "*i64", "negative_index_ptr": "*i64",
                    **ints("num_anchors", "num_candidates", "dim", "anchor_row_stride", "candidate_row_stride",
                           "tune_anchors", "tune_candidates", "tune_dim")},
                   dict(METRIC=0, SAME_INPUT=True, FP64=False, INPUT_PRECISION=precision, UPCAST_DOT=False,
                        BLOCK_B=64, BLOCK_C=64, BLOCK_D=32))
print("compiled")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a card the kernels run (and compile) in the other tests")
def test_forward_kernels_compile_for_sm90_without_a_card():
    pytest.importorskip("triton.backends.nvidia")
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=environment, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]


def test_tuning_bucket_is_the_next_power_of_two():
    assert [common.tuning_bucket(n) for n in (0, 1, 2, 3, 16, 17, 256, 257, 4096)] == [1, 1, 2, 4, 16, 32, 256, 512, 4096]


def test_autotuning_keys_are_bucketed_arguments():
    """A new batch or gallery size must not re-benchmark every config: the keys are the tune_* arguments
    (tuning buckets), which the launchers pass, not the exact sizes."""
    for tuned, keys in ((topk._tuned_kernel(16), ["tune_n", "tune_m", "tune_dim"]),
                        (triplet._batch_hard_mine_tuned, ["tune_anchors", "tune_candidates", "tune_dim"])):
        assert list(tuned.keys) == keys
        assert set(keys) <= set(tuned.arg_names)
