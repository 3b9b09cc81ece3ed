"""evaluate_features(group=...): the gallery sharded over torch.distributed ranks.

Every rank passes the same queries and its own gallery rows (rank 0's first). join_shards gathers the
gallery labels (small: two int64 per item) and this rank's offset; Shard moves the rest: the match distances
(all_gather) and the rank counts, which add up over shards (all_reduce). gloo: host tensors; nccl: the
current CUDA device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Shard:
    """This rank's gallery rows are rows offset .. offset + len of the global gallery (ranks in order)."""

    group: Any
    offset: int
    comm_device: torch.device  # where collectives run: the current CUDA device for nccl, else the host

    def all_reduce(self, values: np.ndarray) -> np.ndarray:
        """Sum of every rank's int64 `values` (same shape on every rank)."""
        import torch.distributed as dist

        tensor = torch.from_numpy(np.ascontiguousarray(values)).to(self.comm_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor.cpu().numpy()

    def all_gather(self, values: torch.Tensor) -> torch.Tensor:
        """Every rank's 1-D `values` (any length, one dtype) concatenated in rank order, on the host."""
        return all_gather_1d(values, self.group, self.comm_device)


def all_gather_1d(values: torch.Tensor, group: Any, comm_device: torch.device) -> torch.Tensor:
    """Every rank's 1-D `values` concatenated in rank order, on the host: sizes first, then one padded gather."""
    import torch.distributed as dist

    world = dist.get_world_size(group)
    size = torch.tensor([values.numel()], dtype=torch.int64, device=comm_device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    lengths = [int(n) for n in sizes]
    if max(lengths) == 0:
        return values.reshape(-1).cpu()
    padded = torch.zeros(max(lengths), dtype=values.dtype, device=comm_device)
    padded[: values.numel()] = values.reshape(-1).to(comm_device)
    pieces = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded, group=group)
    return torch.cat([piece[:n] for piece, n in zip(pieces, lengths)]).cpu()


def join_shards(group: Any, query: torch.Tensor, labels: dict[str, torch.Tensor]) -> tuple[Shard, dict[str, torch.Tensor]]:
    """With group=: this rank's offset in the global gallery, and the global gallery labels (gathered, in rank
    order). Every rank must pass the same queries: checked on their count, dimension and labels."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("group: torch.distributed is not initialised; call init_process_group first or pass group=None")
    nccl = dist.get_backend(group) == "nccl"
    comm_device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    local = labels["g_pids"].shape[0]
    sizes = all_gather_1d(torch.tensor([local], dtype=torch.int64), group, comm_device)
    offset = int(sizes[: dist.get_rank(group)].sum())
    signature = torch.cat([torch.tensor([query.shape[0], query.shape[1]]), labels["q_pids"], labels["q_camids"]])
    signatures = all_gather_1d(signature, group, comm_device)
    if not torch.equal(signatures, signature.repeat(dist.get_world_size(group))):
        raise ValueError("query_feats: every rank must pass the same queries (count, dimension, q_pids, q_camids)")
    joined = dict(labels)
    joined["g_pids"] = all_gather_1d(labels["g_pids"], group, comm_device)
    joined["g_camids"] = all_gather_1d(labels["g_camids"], group, comm_device)
    return Shard(group, offset, comm_device), joined
