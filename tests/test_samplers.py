"""Invariants of PKSampler, DistributedPKSampler and balanced_weighted_sampler."""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reidfast.data import DistributedPKSampler, PKSampler, balanced_weighted_sampler


def long_tailed_pids(num_ids=12, seed=0) -> list[int]:
    """Image labels with 1..~20 images per identity, shuffled (identity 3 has a single image)."""
    generator = torch.Generator().manual_seed(seed)
    counts = [max(1, int(20 / (i + 1))) for i in range(num_ids)]
    pids = [pid * 10 for pid, count in enumerate(counts) for _ in range(count)]
    return [pids[i] for i in torch.randperm(len(pids), generator=generator).tolist()]


def batches_of(sampler, batch_size) -> list[list[int]]:
    indices = list(sampler)
    assert len(indices) % batch_size == 0
    return [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]


def check_pk_batch(batch: list[int], pids: list[int], p: int, k: int) -> None:
    counts = Counter(pids[i] for i in batch)
    assert len(counts) == p, f"batch has {len(counts)} identities, expected {p}"
    assert set(counts.values()) == {k}, f"instances per identity {dict(counts)}, expected {k} each"
    assert [pids[i] for i in batch[::k]] == [pids[i] for i in batch[k - 1::k]]  # groups of K are contiguous


@pytest.mark.parametrize("p,k", [(4, 4), (3, 2), (2, 5), (12, 1)])
def test_every_batch_is_p_identities_by_k_images(p, k):
    pids = long_tailed_pids()
    sampler = PKSampler(pids, num_instances=k, batch_size=p * k, seed=1)
    batches = batches_of(sampler, p * k)
    assert batches
    for batch in batches:
        check_pk_batch(batch, pids, p, k)


def test_len_is_exact_and_never_exceeds_torchreid_estimate():
    pids = long_tailed_pids()
    for epoch in range(5):
        sampler = PKSampler(pids, num_instances=4, batch_size=16, seed=7)
        sampler.set_epoch(epoch)
        yielded = list(sampler)
        assert len(sampler) == len(yielded) and len(yielded) % 16 == 0
        assert len(yielded) <= sampler.torchreid_length
    # with P=1 every group is emitted, so the exact length equals torchreid's estimate
    single = PKSampler(pids, num_instances=4, batch_size=4, seed=0)
    assert len(single) == single.torchreid_length == sum(max(c, 4) // 4 * 4 for c in Counter(pids).values())


def test_every_identity_covered_each_epoch_when_p_is_one_and_small_ids_padded():
    pids = long_tailed_pids()
    sampler = PKSampler(pids, num_instances=4, batch_size=4, seed=3)
    seen = Counter(pids[i] for i in sampler)
    assert set(seen) == set(pids)
    single_image_pid = next(pid for pid, c in Counter(pids).items() if c == 1)
    assert seen[single_image_pid] == 4  # padded with replacement to K


def test_every_identity_covered_with_p_greater_than_one():
    pids = [pid for pid in range(8) for _ in range(4)]  # balanced: every identity has exactly one group
    sampler = PKSampler(pids, num_instances=4, batch_size=16, seed=0)
    assert set(pids[i] for i in sampler) == set(range(8)) and len(sampler) == 32


def test_dataloader_with_sampler_gives_pk_batches():
    pids = long_tailed_pids()
    sampler = PKSampler(pids, num_instances=2, batch_size=8, seed=0)
    loader = torch.utils.data.DataLoader(torch.tensor(pids), batch_size=8, sampler=sampler, drop_last=True)
    batches = list(loader)
    assert len(batches) == len(sampler) // 8
    for batch in batches:
        counts = Counter(batch.tolist())
        assert len(counts) == 4 and set(counts.values()) == {2}


def test_deterministic_per_seed_and_epoch_and_epochs_differ():
    pids = long_tailed_pids()
    first = PKSampler(pids, num_instances=4, batch_size=16, seed=5)
    second = PKSampler(pids, num_instances=4, batch_size=16, seed=5)
    assert list(first) == list(second) == list(first)
    other_seed = PKSampler(pids, num_instances=4, batch_size=16, seed=6)
    assert list(other_seed) != list(first)
    epoch0 = list(first)
    first.set_epoch(1)
    epoch1 = list(first)
    assert epoch1 != epoch0
    first.set_epoch(0)
    assert list(first) == epoch0


def test_images_of_an_identity_are_shuffled():
    pids = [0] * 12 + [1] * 12
    orders = set()
    for seed in range(5):
        stream = list(PKSampler(pids, num_instances=4, batch_size=8, seed=seed))
        orders.add(tuple(i for i in stream if pids[i] == 0))
    assert all(sorted(order) == list(range(12)) for order in orders)  # 12 images, 3 full groups, no repeats
    assert len(orders) > 1 and tuple(range(12)) not in orders


def test_sampler_argument_errors():
    with pytest.raises(ValueError, match="multiple of num_instances"):
        PKSampler([0, 1], num_instances=4, batch_size=6)
    with pytest.raises(ValueError, match="num_instances"):
        PKSampler([0, 1], num_instances=0, batch_size=4)
    with pytest.raises(ValueError, match="at least 4 identities"):
        PKSampler([0, 1, 2], num_instances=2, batch_size=8)
    with pytest.raises(ValueError, match="pids is empty"):
        PKSampler([], num_instances=2, batch_size=4)


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(1, 9), min_size=2, max_size=10), k=st.integers(1, 4), p=st.integers(1, 3),
       seed=st.integers(0, 10_000))
def test_pk_invariants_property(counts, k, p, seed):
    pids = [pid for pid, count in enumerate(counts) for _ in range(count)]
    if len(counts) < p:
        with pytest.raises(ValueError):
            PKSampler(pids, num_instances=k, batch_size=p * k, seed=seed)
        return
    sampler = PKSampler(pids, num_instances=k, batch_size=p * k, seed=seed)
    indices = list(sampler)
    assert len(sampler) == len(indices) > 0
    for batch in batches_of(sampler, p * k):
        check_pk_batch(batch, pids, p, k)
    # no image index appears more often than padding allows
    for pid, count in Counter(pids[i] for i in indices).items():
        assert count <= max(counts[pid], k) // k * k


# --------------------------------------------------------------------------------------------- distributed
@pytest.mark.parametrize("world", [1, 2, 3])
def test_distributed_ranks_disjoint_per_step_and_equal_length(world):
    pids = long_tailed_pids(num_ids=20)
    p, k = 2, 2
    samplers = [DistributedPKSampler(pids, num_instances=k, batch_size=p * k, seed=9, num_replicas=world, rank=r)
                for r in range(world)]
    for epoch in (0, 1):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        per_rank = [batches_of(s, p * k) for s in samplers]
        assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) > 0
        assert all(len(s) == len(list(s)) for s in samplers)
        for step in zip(*per_rank):
            for batch in step:
                check_pk_batch(batch, pids, p, k)
            identity_sets = [{pids[i] for i in batch} for batch in step]
            assert len(set().union(*identity_sets)) == p * world  # disjoint across ranks
    if world == 1:  # one replica is exactly the plain PKSampler
        samplers[0].set_epoch(0)
        assert list(samplers[0]) == list(PKSampler(pids, num_instances=k, batch_size=p * k, seed=9))


def test_distributed_needs_rank_and_enough_identities():
    with pytest.raises(ValueError, match="num_replicas and rank"):
        DistributedPKSampler([0, 1, 2, 3], num_instances=1, batch_size=1)
    with pytest.raises(ValueError, match="rank"):
        DistributedPKSampler([0, 1, 2, 3], num_instances=1, batch_size=1, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="at least 6 identities"):
        DistributedPKSampler([0, 1, 2, 3], num_instances=1, batch_size=2, num_replicas=3, rank=0)


# --------------------------------------------------------------------------------------------- weighted
def test_balanced_weighted_sampler_weights_and_balance():
    pids = [0] * 90 + [1] * 9 + [2]
    sampler = balanced_weighted_sampler(pids, num_samples=30_000, generator=torch.Generator().manual_seed(0))
    assert isinstance(sampler, torch.utils.data.WeightedRandomSampler)
    assert torch.allclose(sampler.weights[[0, 90, 99]], torch.tensor([1 / 90, 1 / 9, 1.0], dtype=torch.double))
    drawn = Counter(pids[i] for i in sampler)
    assert all(abs(drawn[pid] / 30_000 - 1 / 3) < 0.02 for pid in (0, 1, 2))
    assert len(balanced_weighted_sampler(torch.tensor(pids))) == 100
