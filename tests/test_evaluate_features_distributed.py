"""evaluate_features(group=...) with 2 gloo processes, each holding a gallery shard: every rank gets the
single-process result; without group nothing is gathered."""
from __future__ import annotations

import datetime
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist

import reidfast
from conftest import spawn_ranks

WORLD_SIZE = 2
# name: gallery rows of (rank 0, rank 1)
SHARDS = {"uneven": [(0, 170), (170, 400)], "rank-0-empty": [(0, 0), (0, 400)]}
CASES = [("cpu", "market1501"), ("cpu", "cuhk03"), ("torch", "market1501"), ("torch", "cuhk03")]


def problem():
    """Integer-valued clustered features (many ties: the ranking depends on global gallery indices)."""
    rng = np.random.default_rng(0)
    num_ids, dim = 20, 6
    centres = rng.normal(size=(num_ids, dim))
    q_pids, g_pids = rng.integers(0, num_ids, 45), rng.integers(0, num_ids, 400)
    query = np.round(centres[q_pids] + rng.normal(size=(45, dim))).astype(np.float32)
    gallery = np.round(centres[g_pids] + rng.normal(size=(400, dim))).astype(np.float32)
    return query, gallery, q_pids, g_pids, rng.integers(0, 3, 45), rng.integers(0, 3, 400)


def run(backend, protocol, rows=slice(None), group=None):
    query, gallery, q_pids, g_pids, q_camids, g_camids = problem()
    with reidfast.use_backend(backend), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = reidfast.evaluate_features(
            query, gallery[rows], q_pids, g_pids[rows], q_camids, g_camids[rows], protocol=protocol, max_rank=10,
            chunk_size=64, group=group, num_repeats=4,
        )
    return result.to_dict()


EVALUATOR_ROWS = [(0, 200), (200, 445)]  # of the queries followed by the gallery rows


def evaluator_result(rows=slice(None)):
    query, gallery, q_pids, g_pids, q_camids, g_camids = problem()
    features = np.concatenate([query, gallery])
    pids, camids = np.concatenate([q_pids, g_pids]), np.concatenate([q_camids, g_camids])
    is_query = np.arange(features.shape[0]) < query.shape[0]
    evaluator = reidfast.ReIDEvaluator(max_rank=10)
    evaluator.update(torch.from_numpy(features[rows]), pids[rows], camids[rows], torch.from_numpy(is_query[rows]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluator.compute().to_dict()


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=60))
    try:
        outputs = {}
        for name, ranges in SHARDS.items():
            start, end = ranges[rank]
            for backend, protocol in CASES:
                outputs[name, backend, protocol] = run(backend, protocol, slice(start, end), dist.group.WORLD)
        # ReIDEvaluator: queries on both ranks, the gallery sharded (no re-ranking or verification).
        rows = slice(*EVALUATOR_ROWS[rank])
        outputs["evaluator"] = evaluator_result(rows)
        # Without group: this rank's shard alone, though the job is initialised.
        outputs["no-group"] = run("cpu", "market1501", slice(*SHARDS["uneven"][rank]))
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as handle:
            pickle.dump(outputs, handle)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed gloo unavailable")
@pytest.mark.skipif(not reidfast.backends()["cpu"].available, reason="native module not built")
def test_two_gloo_ranks_equal_one_process():
    per_rank = spawn_ranks(_worker, WORLD_SIZE)
    for backend, protocol in CASES:
        want = run(backend, protocol)
        for name in SHARDS:
            for rank in range(WORLD_SIZE):
                assert per_rank[rank][name, backend, protocol] == want, (name, backend, protocol, rank)
    want = evaluator_result()
    want["distributed_world_size"] = WORLD_SIZE
    for rank in range(WORLD_SIZE):
        assert per_rank[rank]["evaluator"] == want, rank
    for rank in range(WORLD_SIZE):
        assert per_rank[rank]["no-group"] == run("cpu", "market1501", slice(*SHARDS["uneven"][rank]))
        assert per_rank[rank]["no-group"]["num_gallery"] == SHARDS["uneven"][rank][1] - SHARDS["uneven"][rank][0]


def test_group_without_initialised_job():
    query, gallery, q_pids, g_pids, q_camids, g_camids = problem()
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    with pytest.raises(ValueError, match="group: torch.distributed is not initialised"):
        reidfast.evaluate_features(query, gallery, q_pids, g_pids, q_camids, g_camids, group=object())
