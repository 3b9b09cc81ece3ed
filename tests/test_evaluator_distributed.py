"""ReIDEvaluator under torch.distributed: 2 gloo processes, each feeding a shard, equal the single process."""
from __future__ import annotations

import datetime
import os
import pickle

import numpy as np
import pytest
import torch
import torch.distributed as dist

import reidfast
from conftest import spawn_ranks

WORLD_SIZE = 2


def shard_problem(seed: int = 0):
    """Clustered integer-valued features, 320 rows, about a quarter of them queries:
    (features, pids, camids, is_query)."""
    rng = np.random.default_rng(seed)
    num_rows, dim, num_ids = 320, 12, 25
    centers = rng.normal(size=(num_ids, dim)).astype(np.float32)
    pids = rng.integers(0, num_ids, num_rows)
    camids = rng.integers(0, 4, num_rows)
    # Rounded features: many tied distances, so the result depends on the gallery order (rank order).
    features = np.round(centers[pids] + rng.normal(scale=0.9, size=(num_rows, dim))).astype(np.float32)
    is_query = rng.random(num_rows) < 0.25
    return features, pids, camids, is_query


SCENARIOS = {
    # name: rows fed by (rank 0, rank 1)
    "uneven-shards": [(0, 130), (130, 320)],
    "rank-0-empty": [(0, 0), (0, 320)],
}


def _evaluate_rows(rows_per_batch: list[slice]) -> reidfast.EvaluatorResult:
    features, pids, camids, is_query = shard_problem()
    evaluator = reidfast.ReIDEvaluator(rerank=True, k1=8, k2=3, max_rank=20, verification=True)
    for rows in rows_per_batch:
        evaluator.update(torch.from_numpy(features[rows]), pids[rows], camids[rows], torch.from_numpy(is_query[rows]))
    return evaluator.compute(), len(evaluator)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=30),
    )
    try:
        outputs = {}
        for name, ranges in SCENARIOS.items():
            start, end = ranges[rank]
            batches = [slice(b, min(b + 48, end)) for b in range(start, end, 48)]  # several batches per rank
            result, num_local_rows = _evaluate_rows(batches)
            outputs[name] = (result.to_dict(), num_local_rows)
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as handle:
            pickle.dump(outputs, handle)
    finally:
        dist.destroy_process_group()


def _spawn() -> list[dict]:
    return spawn_ranks(_worker, WORLD_SIZE)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed gloo unavailable")
def test_two_gloo_ranks_equal_the_single_process_result():
    single, _ = _evaluate_rows([slice(0, 320)])
    expected = single.to_dict()
    assert expected["distributed_world_size"] == 1
    expected["distributed_world_size"] = WORLD_SIZE
    per_rank = _spawn()  # one spawn for every scenario: starting processes dominates the time
    for name, ranges in SCENARIOS.items():
        for rank, outputs in enumerate(per_rank):
            result, num_local_rows = outputs[name]
            assert num_local_rows == ranges[rank][1] - ranges[rank][0], name
            assert result == expected, f"{name}, rank {rank}"
