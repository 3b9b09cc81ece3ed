"""One rule each, across the public API: backend order by device and dtype (tensor cores first for half
precision on CUDA), kernel limits as dispatcher refusals, one feature check, one "same input" rule, one
version string. The selection tests need no GPU: they describe the device and dtype, and simulate the report."""
from __future__ import annotations

import ast
import contextlib
import pathlib
import sys

import pytest
import torch

import reidfast
from reidfast import _arrays, _dispatch, _native
from reidfast.ops import distance as ops_distance
from reidfast.ops import evaluation as ops_evaluation
from reidfast.ops import topk as ops_topk
from reidfast.ops import triplet as ops_triplet

ROOT = pathlib.Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda", 0)


@contextlib.contextmanager
def allow_tf32(enabled: bool):
    """torch.backends.cuda.matmul.allow_tf32 (a property of torch's cuBLAS module: not monkeypatch-able)."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("dtype,allow_tf32,first", [
    (torch.float16, False, "triton"),
    (torch.bfloat16, False, "triton"),
    (torch.float32, True, "triton"),
    (torch.float32, False, "cuda"),
    (torch.float64, True, "cuda"),
    (None, False, "cuda"),
])
def test_cuda_order_puts_tensor_core_dtypes_on_triton_first(dtype, allow_tf32, first):
    order = _dispatch.default_order("cuda", dtype, allow_tf32=allow_tf32)
    assert order[0] == first and set(order) == {"cuda", "triton", "torch", "reference"}
    assert order[-2:] == ("torch", "reference")
    assert _dispatch.default_order("cpu", dtype, allow_tf32=allow_tf32) == ("cpu", "torch", "reference")


def test_order_reads_torch_allow_tf32():
    with allow_tf32(True):
        assert _dispatch.default_order("cuda", torch.float32)[0] == "triton"
    with allow_tf32(False):
        assert _dispatch.default_order("cuda", torch.float32)[0] == "cuda"


@pytest.fixture
def simulated_gpu(monkeypatch):
    """A report in which cuda and triton both run CUDA tensors (as on a card with the kernels built)."""
    report = _dispatch.BackendReport(_dispatch.backends())
    report["cuda"] = _dispatch.BackendInfo("cuda", True, "simulated CUDA kernels", ("cuda",))
    report["triton"] = _dispatch.BackendInfo("triton", True, "simulated triton", ("cuda",))
    report["torch"] = _dispatch.BackendInfo("torch", True, "simulated torch", ("cpu", "cuda"))
    monkeypatch.setattr(_dispatch, "backends", lambda: report)

    class Kernels:
        cuda_topk_max_k = 256

    monkeypatch.setattr(_native, "cuda_kernels", lambda: Kernels)
    with allow_tf32(False):
        yield report


@pytest.mark.parametrize("op", [ops_distance.PAIRWISE_DISTANCE, ops_topk.TOPK_DISTANCE, ops_triplet.BATCH_HARD_MINE],
                         ids=lambda op: op.name)
def test_half_precision_cuda_inputs_go_to_triton(simulated_gpu, op):
    call = {"k": 20} if op is ops_topk.TOPK_DISTANCE else {}
    assert op.select(CUDA, torch.float16, **call)[0] == "triton"
    assert op.select(CUDA, torch.bfloat16, **call)[0] == "triton"
    assert op.select(CUDA, torch.float32, **call)[0] == "cuda"
    assert op.select(CUDA, torch.float64, **call)[0] == "cuda"
    with allow_tf32(True):
        assert op.select(CUDA, torch.float32, **call)[0] == "triton"
    simulated_gpu["triton"] = _dispatch.BackendInfo("triton", False, "simulated: triton missing")
    assert op.select(CUDA, torch.float16, **call)[0] == "cuda"


def test_backends_report_states_the_order():
    text = str(reidfast.backends())
    assert "float16/bfloat16" in text and "triton, cuda" in text and "provisional" in text


def test_topk_kernel_limits_are_refusals_in_the_selection(simulated_gpu):
    pytest.importorskip("triton")
    from reidfast.kernels.triton.topk import MAX_K

    select = ops_topk.TOPK_DISTANCE.select
    assert select(CUDA, torch.float16, k=MAX_K)[0] == "triton"
    assert select(CUDA, torch.float16, k=MAX_K + 1)[0] == "cuda"  # above Triton's limit, within CUDA's
    assert select(CUDA, torch.float32, k=256)[0] == "cuda"
    assert select(CUDA, torch.float32, k=257)[0] == "torch"  # both kernels refuse: chunked distances + sort
    with reidfast.use_backend("cuda"):  # a forced kernel that refuses hands the call to the op's fallback
        assert select(CUDA, torch.float32, k=257)[0] == "torch"
        assert select(CUDA, torch.float32, k=3)[0] == "cuda"


def test_a_forced_backend_that_refuses_without_fallback_says_why(monkeypatch):
    op = _dispatch.Op("limited")
    op.register("reference", refuses=lambda device, dtype, *, k: None if k < 5 else f"k={k} is too large")(lambda: 0)
    assert op.select(torch.device("cpu"), k=3)[0] == "reference"
    monkeypatch.setenv("REIDFAST_BACKEND", "reference")
    with pytest.raises(reidfast.BackendUnavailableError, match="cannot take this call: k=7 is too large"):
        op.select(torch.device("cpu"), k=7)


@pytest.mark.skipif(not reidfast.backends()["cpu"].available, reason="native CPU backend not built")
def test_topk_beyond_the_kernel_limit_forced_on_the_emulated_cuda_backend_matches_the_reference():
    if not reidfast.backends()["cuda"].available:
        pytest.skip("cuda backend (or its CPU emulator) not usable here")
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 4, generator=generator), torch.randn(300, 4, generator=generator)
    with reidfast.use_backend("cuda"):
        values, indices = reidfast.topk_distance(x, y, k=290)
    expected = torch.sort(reidfast.reference.distance.pairwise_distance(x, y), dim=1, stable=True)
    assert torch.equal(indices, expected.indices[:, :290])
    torch.testing.assert_close(values, expected.values[:, :290], rtol=0, atol=1e-5)


def test_evaluate_declares_its_host_backends_and_host_order(monkeypatch):
    op = ops_evaluation.EVALUATE
    with reidfast.use_backend("reference"):  # a forced host backend streams a distmat from any device
        assert op.select(CUDA, torch.float32)[0] == "reference"
    monkeypatch.setattr(_dispatch, "_cpu_info", lambda: _dispatch.BackendInfo("cpu", False, "simulated: not built"))
    assert op.select(torch.device("cpu"), torch.float32)[0] == "reference"  # not the torch backend's row sorts
    with reidfast.use_backend("torch"):
        assert op.select(torch.device("cpu"), torch.float32)[0] == "torch"


def test_one_feature_check_and_one_same_input_rule():
    from reidfast.kernels.triton import common  # noqa: PLC0415 (triton is optional)

    assert ops_distance.check_features is _arrays.check_features
    assert ops_distance.same_rows is common.same_rows is _arrays.same_rows
    bad = torch.ones(3, 4, dtype=torch.int64)
    messages = []
    for check in (lambda: reidfast.pairwise_distance(bad), lambda: common.check_features("x", bad)):
        with pytest.raises(ValueError) as error:
            check()
        messages.append(str(error.value))
    assert messages[0] == messages[1] == "x: expected a floating dtype (float32, float16, bfloat16, float64), got torch.int64"
    with pytest.raises(ValueError, match=r"^x: expected unit inner stride"):
        common.check_features("x", torch.ones(4, 3).T)
    with pytest.raises(ValueError, match=r"^y: expected a torch tensor, got numpy.ndarray"):
        common.check_features("y", torch.ones(4, 3).numpy())
    common.check_features("x", torch.ones(0, 3))  # the launchers take empty inputs; the ops do not
    with pytest.raises(ValueError, match="x: expected at least one row"):
        reidfast.pairwise_distance(torch.ones(0, 3))


def test_same_rows_means_row_i_of_both_is_one_vector():
    x = torch.randn(6, 4)
    assert _arrays.same_rows(x, x) and _arrays.same_rows(x, x.view(6, 4))
    assert _arrays.same_rows(x[:3], x) and _arrays.same_rows(x, x[:3])  # e.g. anchors = the first candidates
    assert not _arrays.same_rows(x[1:], x)  # row i of x[1:] is row i + 1 of x
    assert not _arrays.same_rows(x[::2], x)
    assert not _arrays.same_rows(x, x.clone())
    assert not _arrays.same_rows(x[:, :2], x[:, 2:])
    assert not _arrays.same_rows(x, x.view(torch.int32))


@pytest.mark.skipif(not reidfast.backends()["cpu"].available, reason="native CPU backend not built")
@pytest.mark.parametrize("gemm", ["auto", "blas"])
def test_rows_shared_with_a_longer_array_get_exact_self_distances_on_the_cpu(monkeypatch, gemm):
    monkeypatch.setenv(ops_distance.CPU_GEMM_ENV, gemm)
    x = torch.randn(40, 24, generator=torch.Generator().manual_seed(3)) * 10
    with reidfast.use_backend("cpu"):
        distances = reidfast.pairwise_distance(x[:7], x, metric="sqeuclidean")
        values, indices = reidfast.topk_distance(x[:7], x, k=2, metric="sqeuclidean")
    assert distances.shape == (7, 40)
    assert torch.equal(distances.diagonal(), torch.zeros(7))
    torch.testing.assert_close(distances, reidfast.reference.distance.pairwise_distance(x[:7], x, "sqeuclidean"),
                               rtol=0, atol=1e-2)
    assert torch.equal(indices[:, 0], torch.arange(7)) and torch.equal(values[:, 0], torch.zeros(7))


def test_one_version_string():
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "reidfast.__version__"}
    tree = ast.parse((ROOT / "reidfast" / "__init__.py").read_text())
    literals = [node.value.value for node in tree.body if isinstance(node, ast.Assign)
                and [getattr(t, "id", None) for t in node.targets] == ["__version__"]]
    assert literals == [reidfast.__version__]  # a literal, so setuptools reads it without importing torch
