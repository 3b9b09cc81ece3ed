"""reidfast.integrations.torchmetrics.ReIDMetric equals ReIDEvaluator, in one process and synced over 2 gloo ranks."""
from __future__ import annotations

import datetime
import os
import pickle

import pytest
import torch
import torch.distributed as dist

import reidfast
from conftest import spawn_ranks

pytest.importorskip("torchmetrics", reason="torchmetrics is not installed (pip install 'reidfast[integrations]')")
from reidfast.integrations.torchmetrics import ReIDMetric  # noqa: E402
from test_evaluator_distributed import shard_problem  # noqa: E402

WORLD_SIZE = 2
OPTIONS = dict(rerank=True, k1=8, k2=3, max_rank=20)
SCALARS = ("rank1", "rank5", "rank10", "mAP", "mINP")


def evaluator_values(rows: slice, options: dict) -> dict[str, float]:
    features, pids, camids, is_query = shard_problem()
    evaluator = reidfast.ReIDEvaluator(**options)
    evaluator.update(torch.from_numpy(features[rows]), pids[rows], camids[rows], torch.from_numpy(is_query[rows]))
    result = evaluator.compute()
    values = {name: getattr(result.ranking, name) for name in SCALARS}
    if result.reranked is not None:
        values.update({f"reranked_{name}": getattr(result.reranked, name) for name in SCALARS})
    return values


def metric_values(batches: list[slice], options: dict) -> dict[str, float]:
    features, pids, camids, is_query = shard_problem()
    metric = ReIDMetric(**options)
    for rows in batches:
        metric.update(torch.from_numpy(features[rows]), torch.from_numpy(pids[rows]), camids[rows], torch.from_numpy(is_query[rows]))
    values = metric.compute()
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in values.values())
    return {name: v.item() for name, v in values.items()}


def assert_equal_values(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-6, abs=0), name  # float32 tensors of float64 means


@pytest.mark.parametrize("options", [{}, OPTIONS, dict(metric="cosine", protocol="cuhk03", seed=3)])
def test_metric_equals_the_evaluator(options):
    batches = [slice(b, min(b + 48, 320)) for b in range(0, 320, 48)]
    assert_equal_values(metric_values(batches, options), evaluator_values(slice(0, 320), options))


def test_reset_and_the_kept_result():
    features, pids, camids, is_query = shard_problem()
    metric = ReIDMetric(max_rank=10)
    metric.update(torch.from_numpy(features[:100]), pids[:100], camids[:100], torch.from_numpy(is_query[:100]))
    first = metric.compute()
    assert metric.result is not None and metric.result.rank1 == pytest.approx(first["rank1"].item())
    metric.reset()
    metric.update(torch.from_numpy(features), pids, camids, torch.from_numpy(is_query))
    assert_equal_values({k: v.item() for k, v in metric.compute().items()}, evaluator_values(slice(0, 320), {"max_rank": 10}))


def test_bad_updates_and_options_raise_naming_the_argument():
    metric = ReIDMetric()
    with pytest.raises(ValueError, match="features: expected a 2-D"):
        metric.update(torch.zeros(4), [0] * 4, [0] * 4, True)
    with pytest.raises(ValueError, match=r"pids: expected shape \(4,\)"):
        metric.update(torch.zeros(4, 2), [0] * 3, [0] * 4, True)
    with pytest.raises(ValueError, match="is_query: expected a bool"):
        metric.update(torch.zeros(4, 2), [0] * 4, [0] * 4, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="metric: expected one of"):
        ReIDMetric(metric="manhattan")


SCENARIOS = {"uneven-shards": [(0, 130), (130, 320)]}  # rows fed by (rank 0, rank 1)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=30))
    try:
        outputs = {}
        for name, ranges in SCENARIOS.items():
            start, end = ranges[rank]
            outputs[name] = metric_values([slice(b, min(b + 48, end)) for b in range(start, end, 48)], OPTIONS)
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as handle:
            pickle.dump(outputs, handle)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed gloo unavailable")
def test_two_gloo_ranks_sync_to_the_single_process_result():
    expected = evaluator_values(slice(0, 320), OPTIONS)
    per_rank = spawn_ranks(_worker, WORLD_SIZE)
    local_only = evaluator_values(slice(0, 130), OPTIONS)
    assert local_only["mAP"] != pytest.approx(expected["mAP"])  # a rank's own rows alone give other numbers
    for outputs in per_rank:
        for name in SCENARIOS:
            assert_equal_values(outputs[name], expected)
