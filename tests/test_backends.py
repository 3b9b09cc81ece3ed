"""Backend discovery, forcing and the fallback when the native module is missing."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import reidfast
from reidfast import _dispatch, _native


def test_report_lists_every_backend_with_a_reason():
    report = reidfast.backends()
    assert list(report) == ["cuda", "triton", "cpu", "torch", "reference"]
    for name, info in report.items():
        assert info.name == name
        assert info.reason
        assert bool(info.devices) == info.available
    assert report["reference"].available
    assert "reference" in str(report)


@pytest.mark.skipif(os.environ.get("REIDFAST_REQUIRE_NATIVE") != "1", reason="set REIDFAST_REQUIRE_NATIVE=1 (CI does)")
def test_native_module_is_built_when_required():
    info = reidfast.backends()["cpu"]
    assert info.available, info.reason
    build = reidfast.build_info()
    assert build["compiler"] and build["build_type"]
    assert build["openmp"], "CI expects the CPU kernels built with OpenMP"
    # The CUDA kernels' tests need the emulator where there is no card: CI builds it (REIDFAST_CUDA_EMULATOR=1);
    # wheels never hold it.
    if sys.platform.startswith("linux") and os.environ.get("REIDFAST_CUDA_EMULATOR") == "1":
        assert _native._cuda_emulator is not None, _native.EMULATOR_LOAD_ERROR


def test_build_info_records_the_toolchain():
    build = reidfast.build_info()
    if not reidfast.backends()["cpu"].available:
        assert build == {}
        return
    assert set(build) >= {"compiler", "cxx_standard", "openmp", "cuda", "build_type"}
    assert build["cxx_standard"] >= 201703
    if build["cuda"]:
        assert build["cuda_compiler"] and build["cuda_architectures"]


def test_use_backend_forces_and_restores():
    x = torch.randn(4, 3)
    assert _dispatch.requested_backend() is None
    with reidfast.use_backend("reference"):
        assert _dispatch.requested_backend() == "reference"
        name, _ = reidfast.ops.distance.PAIRWISE_DISTANCE.select(x.device)
        assert name == "reference"
        with reidfast.use_backend("auto"):
            assert _dispatch.requested_backend() is None
    assert _dispatch.requested_backend() is None


def test_default_choice_prefers_native_on_cpu():
    name, _ = reidfast.ops.distance.PAIRWISE_DISTANCE.select(torch.device("cpu"))
    expected = "cpu" if reidfast.backends()["cpu"].available else "reference"
    assert name == expected


def test_unknown_backend_names_are_rejected():
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        with reidfast.use_backend("gpu"):
            pass


def test_forcing_an_unusable_backend_says_why(monkeypatch):
    report = reidfast.backends()
    unusable = [name for name, info in report.items() if not info.available]
    if not unusable:
        pytest.skip("every backend is usable here")
    name = unusable[0]
    with pytest.raises(reidfast.BackendUnavailableError, match=name):
        with reidfast.use_backend(name):
            pass
    monkeypatch.setenv("REIDFAST_BACKEND", name)
    with pytest.raises(reidfast.BackendUnavailableError, match="not usable"):
        reidfast.pairwise_distance(torch.randn(3, 2))


def test_environment_variable_forces_a_backend(monkeypatch):
    monkeypatch.setenv("REIDFAST_BACKEND", "reference")
    assert _dispatch.requested_backend() == "reference"
    monkeypatch.setenv("REIDFAST_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="REIDFAST_BACKEND"):
        reidfast.pairwise_distance(torch.randn(3, 2))
    monkeypatch.setenv("REIDFAST_BACKEND", "auto")
    assert _dispatch.requested_backend() is None


def test_forcing_a_backend_the_op_lacks_is_an_error(monkeypatch):
    op = _dispatch.Op("only_reference_and_cuda")
    op.register("reference")(lambda: "reference")
    op.register("cuda")(lambda: "cuda")
    monkeypatch.setenv("REIDFAST_BACKEND", "cpu")
    with pytest.raises(reidfast.BackendUnavailableError, match="no 'cpu' implementation .it has: cuda, reference"):
        op.select(torch.device("cpu"))
    monkeypatch.setenv("REIDFAST_BACKEND", "reference")
    assert op.select(torch.device("cpu"))[0] == "reference"


def test_cpu_backend_refuses_cuda_tensors_by_device_type():
    if not reidfast.backends()["cpu"].available:
        pytest.skip("native CPU backend not built")
    with reidfast.use_backend("cpu"):
        with pytest.raises(reidfast.BackendUnavailableError, match="runs on cpu tensors, but the input is on cuda"):
            reidfast.ops.distance.PAIRWISE_DISTANCE.select(torch.device("cuda", 0))


def test_import_works_without_the_native_module():
    """A missing or broken _C must leave the reference backend working and say how to fix it."""
    script = textwrap.dedent(
        """
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "reidfast._C":
                    raise ImportError("simulated: undefined symbol in _C")
        sys.meta_path.insert(0, Block())
        import torch, reidfast
        report = reidfast.backends()
        assert not report["cpu"].available and not report["cuda"].available
        assert "simulated" in report["cpu"].reason and "pip install" in report["cpu"].reason, report["cpu"].reason
        d = reidfast.pairwise_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
        assert abs(float(d[0, 1]) - 5.0) < 1e-6
        try:
            with reidfast.use_backend("cpu"):
                pass
        except reidfast.BackendUnavailableError as error:
            assert "pip install" in str(error)
        else:
            raise AssertionError("forcing cpu should fail")
        print("ok")
        """
    )
    environment = {k: v for k, v in os.environ.items() if k != "REIDFAST_EMULATE_CUDA"}  # the real cuda backend
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=environment)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_cli_info_prints_backends(capsys):
    from reidfast.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backends:" in out and "reference" in out


@pytest.mark.skipif(not _native.available(), reason="native module not built")
def test_views_keep_their_tensor_alive():
    """A view of a temporary, as in view(labels.to(torch.int64)), must not dangle while a kernel call holds it:
    the kernel would read freed memory (or write into it)."""
    import gc
    import weakref

    makers = [_native.view] + ([_native.cuda_view] if _native._cuda_emulator is not None else [])
    for make_view in makers:
        temporary = torch.arange(6, dtype=torch.int32).to(torch.int64)
        alive = weakref.ref(temporary)
        array = make_view(temporary)
        del temporary
        gc.collect()
        assert alive() is not None
        del array
        gc.collect()
        assert alive() is None
