"""Shared test fixtures: the device list and the backends usable on each device.

Without CUDA the whole test session runs the GPU kernels on CPU tensors: Triton's under TRITON_INTERPRET=1
(set before any kernel module is imported), the CUDA kernels on reidfast's CPU emulator (REIDFAST_EMULATE_CUDA=1,
csrc/cuda_emulator). The interpreter is slow: tests keep Triton's shapes small on CPU.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("REIDFAST_EMULATE_CUDA", "1")

import pytest  # noqa: E402

import reidfast  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Where Triton kernel tests run: CPU tensors under the interpreter, else CUDA tensors (None: nowhere).
TRITON_TEST_DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else ("cuda" if torch.cuda.is_available() else None)


def backends_for(device: str, implemented: tuple[str, ...] = ("cuda", "triton", "cpu")) -> list[str]:
    """Fast backends that are usable on `device` (the reference is what they are compared against)."""
    report = reidfast.backends()
    return [name for name in implemented if report[name].available and device in report[name].devices]


def _backend_marks(device: str, backend: str) -> list:
    on_card = [pytest.mark.cuda] if device == "cuda" else []  # `-m cuda` selects the card's cases
    if backend == "triton":
        return on_card + [pytest.mark.triton]
    return on_card + ([pytest.mark.cuda_emulator] if (device, backend) == ("cpu", "cuda") else [])


def device_backend_params(implemented: tuple[str, ...] = ("cuda", "triton", "cpu")) -> list:
    """pytest params (device, backend) for every fast backend usable here, e.g. cpu-cpu, cpu-triton, cuda-cuda."""
    params = [
        pytest.param(device, name, id=f"{device}-{name}", marks=_backend_marks(device, name))
        for device in DEVICES
        for name in backends_for(device, implemented)
    ]
    return params or [pytest.param("cpu", "none", id="no-fast-backend", marks=pytest.mark.skip(reason="no fast backend built"))]


def spawn_ranks(worker, world_size: int) -> list:
    """Run worker(rank, init_file, out_dir) in world_size spawned processes (each pickles its outputs to
    out_dir/rank{rank}.pkl) -> the ranks' outputs in rank order; skips when this sandbox cannot spawn."""
    import pickle
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out_dir:
        try:
            mp.spawn(worker, args=(os.path.join(out_dir, "init"), out_dir), nprocs=world_size, join=True)
        except (OSError, PermissionError) as error:  # no process spawning in this sandbox
            pytest.skip(f"cannot spawn worker processes: {error}")
        outputs = []
        for rank in range(world_size):
            with open(os.path.join(out_dir, f"rank{rank}.pkl"), "rb") as handle:
                outputs.append(pickle.load(handle))
        return outputs
