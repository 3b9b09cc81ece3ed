"""Identity-balanced samplers: P identities x K images per batch (torchreid RandomIdentitySampler semantics).

The samplers yield a flat stream of dataset indices; use them with
``DataLoader(dataset, batch_size=P*K, sampler=sampler, drop_last=True)`` so every batch holds P identities
with K images each.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler, WeightedRandomSampler

__all__ = ["PKSampler", "DistributedPKSampler", "balanced_weighted_sampler"]


def _as_pid_list(pids) -> list[int]:
    if isinstance(pids, torch.Tensor):
        pids = pids.tolist()
    pids = [int(p) for p in pids]
    if not pids:
        raise ValueError("pids is empty: need at least one image")
    return pids


class PKSampler(Sampler[int]):
    """P identities x K instances per batch over a dataset with labels `pids` (one per image, length N).

    Per epoch, for each identity: shuffle its indices, pad to K by sampling with replacement if it has
    fewer than K, chunk into groups of K (a trailing partial group is dropped). Then repeatedly draw P
    distinct identities among those with groups left and emit one group of each, until fewer than P
    identities have groups left. Deterministic for (seed, epoch); call ``set_epoch`` each epoch.

    ``len()`` is exact: the number of indices this epoch yields (a multiple of P*K). torchreid's length is
    an upper-bound estimate (sum of per-identity group sizes), kept here as ``torchreid_length``.
    """

    def __init__(self, pids: Sequence[int] | torch.Tensor, num_instances: int = 4, batch_size: int = 64,
                 seed: int = 0):
        self.pids = _as_pid_list(pids)
        if num_instances < 1:
            raise ValueError(f"num_instances: expected >= 1, got {num_instances}")
        if batch_size < num_instances or batch_size % num_instances != 0:
            raise ValueError(f"batch_size: expected a positive multiple of num_instances ({num_instances}), "
                             f"got {batch_size}")
        self.num_instances = num_instances
        self.batch_size = batch_size
        self.num_pids_per_batch = batch_size // num_instances
        self.seed = int(seed)
        self.epoch = 0
        self.indices_by_pid: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(self.pids):
            self.indices_by_pid[pid].append(index)
        self.unique_pids = sorted(self.indices_by_pid)
        self._check_enough_identities(self.num_pids_per_batch)
        self._cache: tuple[int, list[int]] | None = None

    def _check_enough_identities(self, needed: int) -> None:
        if len(self.unique_pids) < needed:
            raise ValueError(f"need at least {needed} identities per batch, dataset has {len(self.unique_pids)}")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose (seed, epoch) permutation the next iteration yields."""
        self.epoch = int(epoch)

    @property
    def torchreid_length(self) -> int:
        """torchreid's estimate: sum over identities of max(n, K) rounded down to a multiple of K."""
        total = 0
        for indices in self.indices_by_pid.values():
            n = max(len(indices), self.num_instances)
            total += n - n % self.num_instances
        return total

    def _generator(self) -> torch.Generator:
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        return generator

    def _epoch_batches(self, pids_per_step: int) -> list[list[list[int]]]:
        """Steps of `pids_per_step` groups of K indices each, for the current (seed, epoch)."""
        generator = self._generator()
        k = self.num_instances
        groups_by_pid: dict[int, list[list[int]]] = {}
        for pid in self.unique_pids:
            indices = torch.tensor(self.indices_by_pid[pid])
            if len(indices) < k:
                indices = indices[torch.randint(len(indices), (k,), generator=generator)]
            indices = indices[torch.randperm(len(indices), generator=generator)].tolist()
            groups_by_pid[pid] = [indices[i:i + k] for i in range(0, len(indices) - k + 1, k)]
        available = list(self.unique_pids)
        steps = []
        while len(available) >= pids_per_step:
            chosen = torch.randperm(len(available), generator=generator)[:pids_per_step].tolist()
            selected = [available[i] for i in chosen]
            steps.append([groups_by_pid[pid].pop(0) for pid in selected])
            available = [pid for pid in available if groups_by_pid[pid]]
        return steps

    def _epoch_indices(self) -> list[int]:
        if self._cache is None or self._cache[0] != self.epoch:
            steps = self._epoch_batches(self.num_pids_per_batch)
            self._cache = (self.epoch, [i for step in steps for group in step for i in group])
        return self._cache[1]

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._epoch_indices()))

    def __len__(self) -> int:
        return len(self._epoch_indices())


class DistributedPKSampler(PKSampler):
    """PKSampler for DDP: each global step draws P*num_replicas identities and rank r takes the r-th P of them.

    So at every step the ranks see disjoint identities, and all ranks yield the same number of batches
    (same seed and epoch on every rank). ``batch_size`` is the per-rank batch P*K.
    """

    def __init__(self, pids: Sequence[int] | torch.Tensor, num_instances: int = 4, batch_size: int = 64,
                 seed: int = 0, num_replicas: int | None = None, rank: int | None = None):
        if num_replicas is None or rank is None:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise ValueError("num_replicas and rank are required when torch.distributed is not initialised")
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}")
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        super().__init__(pids, num_instances, batch_size, seed)
        self._check_enough_identities(self.num_pids_per_batch * self.num_replicas)

    def _epoch_indices(self) -> list[int]:
        if self._cache is None or self._cache[0] != self.epoch:
            p = self.num_pids_per_batch
            steps = self._epoch_batches(p * self.num_replicas)
            mine = [step[self.rank * p:(self.rank + 1) * p] for step in steps]
            self._cache = (self.epoch, [i for step in mine for group in step for i in group])
        return self._cache[1]


def balanced_weighted_sampler(pids: Sequence[int] | torch.Tensor, num_samples: int | None = None,
                              replacement: bool = True, generator: torch.Generator | None = None
                              ) -> WeightedRandomSampler:
    """WeightedRandomSampler with weight 1/count(pid) per image, so identities are drawn equally often.

    `num_samples` defaults to the number of images N.
    """
    pids = _as_pid_list(pids)
    counts: dict[int, int] = defaultdict(int)
    for pid in pids:
        counts[pid] += 1
    weights = torch.tensor([1.0 / counts[pid] for pid in pids], dtype=torch.double)
    return WeightedRandomSampler(weights, num_samples if num_samples is not None else len(pids),
                                 replacement=replacement, generator=generator)
