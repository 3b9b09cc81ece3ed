"""torch.distributed plumbing of `reidfast.train`: joining or starting the process group, rank-0 decisions."""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from .train_config import _resolve_device

__all__ = ["is_main_process"]


def _distributed_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """True on rank 0 of a torch.distributed job (or torchrun's RANK=0 before/after it), and outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}: expected an integer, got {text!r}") from None


@contextlib.contextmanager
def _process_group(device_name: str) -> Iterator[tuple[torch.device, int, int]]:
    """-> (device, rank, world_size) of this process; a single process is (device, 0, 1).

    Joins an initialised torch.distributed group, or initialises one from torchrun's environment
    (WORLD_SIZE > 1: RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) with nccl on CUDA and gloo on CPU, and
    destroys only a group it started.
    """
    started = False
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    else:
        rank, world_size = 0, _env_int("WORLD_SIZE", 1)
        if world_size > 1:
            if not dist.is_available():
                raise RuntimeError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed")
            if "RANK" not in os.environ:
                raise ValueError(f"WORLD_SIZE={world_size} but RANK is not set: launch with torchrun, which sets "
                                 "RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT")
            rank = _env_int("RANK", 0)
    if world_size <= 1:
        yield _resolve_device(device_name), 0, 1
        return
    device = _resolve_device(device_name, local_rank=_env_int("LOCAL_RANK", rank))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        started = True
    try:
        yield device, rank, world_size
    finally:
        if started:
            dist.destroy_process_group()


def _from_rank0(value: Any, world_size: int) -> Any:
    """Rank 0's `value` on every rank (so that checks made on rank 0 end every rank the same way)."""
    if world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _broadcast_buffers(module: nn.Module, world_size: int) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
    if world_size > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
