"""reidfast.train.train under DDP: 2 CPU processes with gloo, on a tiny synthetic dataset.

One test spawns two workers that join a process group and call train() three times (two uninterrupted
epochs; one epoch, then a resume to two). Each rank gets its own output folder, so a file written by
rank 1 would show. The other test runs the real command under torchrun, which initialises the group
itself from the environment.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from reidfast.data import load_market1501, make_synthetic_reid
from reidfast.train import TrainConfig, evaluate_model, load_checkpoint_model, train

WORLD_SIZE = 2
TINY = dict(epochs=2, batch_p=3, batch_k=4, lr=3e-3, warmup_epochs=0, milestones=(), height=32, width=16,
            model_width=8, erasing_p=0.0, eval_every=1, seed=0, progress=False, device="cpu")

pytestmark = pytest.mark.filterwarnings("ignore:number of gallery samples")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_synthetic_reid(root, num_train_ids=8, num_test_ids=6, num_cameras=3, image_size=(32, 16), zipf_a=1.1)
    return root


def _worker(rank: int, root: str, base: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(base, 'init')}", rank=rank,
                            world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=60))
    try:
        dataset = load_market1501(root)
        messages: list[str] = []
        full = train(dataset, TrainConfig(**TINY), os.path.join(base, f"full-rank{rank}"), log=messages.append)
        train(dataset, TrainConfig(**{**TINY, "epochs": 1}), os.path.join(base, f"part-rank{rank}"), log=None)
        resumed = train(dataset, TrainConfig(**TINY), os.path.join(base, f"part-rank{rank}"), log=None,
                        resume=os.path.join(base, "part-rank0", "checkpoint.pt"))
        errors = {}  # raised on every rank alike, before any collective that could hang
        for name, config, out in (("batch", {**TINY, "batch_p": 5}, f"other-rank{rank}"),
                                  ("exists", TINY, f"full-rank{rank}")):  # rank 0 decides for rank 1
            try:
                train(dataset, TrainConfig(**config), os.path.join(base, out), log=None)
            except (ValueError, FileExistsError) as error:
                errors[name] = f"{type(error).__name__}: {error}"
        torch.save({"state": full["model"].state_dict(), "history": full["history"], "messages": messages,
                    "world_size": full["world_size"], "resumed_history": resumed["history"],
                    "resumed_state": resumed["model"].state_dict(), "errors": errors},
                   os.path.join(base, f"rank{rank}.pt"))
        assert dist.is_initialized()  # train() leaves a group it did not start alone
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_run(data_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    try:
        mp.spawn(_worker, args=(str(data_root), str(base)), nprocs=WORLD_SIZE, join=True)
    except (OSError, PermissionError) as error:  # no process spawning in this sandbox
        pytest.skip(f"cannot spawn worker processes: {error}")
    ranks = [torch.load(base / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]
    return base, ranks


def test_ranks_end_with_identical_models_and_finite_losses(ddp_run):
    _, (rank0, rank1) = ddp_run
    assert rank0["world_size"] == rank1["world_size"] == 2
    for name, tensor in rank0["state"].items():  # parameters and BatchNorm statistics
        assert torch.equal(rank1["state"][name], tensor), name
    assert [h["epoch"] for h in rank0["history"]] == [1, 2]
    for record in rank0["history"]:
        assert record["steps"] >= 2 and len(record["step_losses"]) == record["steps"]
        assert all(math.isfinite(v) for v in (*record["step_losses"], record["loss"], record["triplet_loss"]))
    # losses are averaged over the ranks, evaluations gathered: both ranks report the same
    def without_times(history):
        return [{k: v for k, v in record.items() if k != "time_s"} for record in history]

    assert without_times(rank1["history"]) == without_times(rank0["history"])
    assert rank0["history"][1]["loss"] < rank0["history"][0]["loss"]


def test_only_rank_0_writes_and_logs(ddp_run):
    base, (rank0, rank1) = ddp_run
    assert sorted(os.listdir(base / "full-rank0")) == ["checkpoint.pt", "metrics.json"]
    assert not (base / "full-rank1").exists() and not (base / "part-rank1").exists()
    assert len(rank0["messages"]) == 2 and "epoch 2/2" in rank0["messages"][1] and rank1["messages"] == []
    metrics = json.loads((base / "full-rank0" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["history"][1]["loss"] == pytest.approx(rank0["history"][1]["loss"])
    checkpoint = torch.load(base / "full-rank0" / "checkpoint.pt", weights_only=True)
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng_per_rank"]) == 2
    for name, tensor in rank0["state"].items():
        assert torch.equal(checkpoint["model"][name], tensor), name


def test_sharded_evaluation_equals_a_single_process_one(ddp_run, data_root):
    base, (rank0, _) = ddp_run
    loaded = load_checkpoint_model(base / "full-rank0" / "checkpoint.pt", device="cpu")
    single = evaluate_model(loaded.model, load_market1501(data_root), loaded.config)
    distributed = rank0["history"][-1]["eval"]
    assert distributed["num_query"] == single.num_query and distributed["num_gallery"] == single.num_gallery
    assert distributed["ranking"]["mAP"] == pytest.approx(single.mAP, abs=1e-6)
    assert distributed["ranking"]["cmc"] == pytest.approx(single.cmc.tolist(), abs=1e-6)
    assert distributed["distributed_world_size"] == 2


def test_resume_under_ddp_continues_exactly(ddp_run):
    _, ranks = ddp_run
    for rank in ranks:
        full, resumed = rank["history"], rank["resumed_history"]
        assert [h["epoch"] for h in resumed] == [1, 2]
        assert resumed[0]["step_losses"] == pytest.approx(full[0]["step_losses"], rel=1e-6)
        assert resumed[1]["step_losses"] == pytest.approx(full[1]["step_losses"], rel=1e-5)
        for name, tensor in rank["state"].items():
            assert torch.allclose(rank["resumed_state"][name].float(), tensor.float(), rtol=1e-4, atol=1e-6), name


def test_reidfast_train_under_torchrun(data_root, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD_SIZE),
               "-m", "reidfast", "train", "--data", str(data_root), "--out", str(out), "--epochs", "1",
               "--batch-p", "3", "--batch-k", "4", "--height", "32", "--width", "16", "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("final: mAP") == 1  # rank 0 reports, rank 1 stays quiet
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "metrics.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == WORLD_SIZE and metrics["history"][0]["steps"] >= 2
    assert math.isfinite(metrics["history"][0]["loss"])
    assert result.stderr.count("epoch 1/1: loss") + result.stdout.count("epoch 1/1: loss") == 1


def test_world_size_without_rank_is_a_clear_error(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="RANK is not set: launch with torchrun"):
        train(load_market1501(data_root), TrainConfig(**TINY), tmp_path / "out", log=None)
    assert not (tmp_path / "out").exists()


def test_errors_end_every_rank_the_same_way(ddp_run):
    base, (rank0, rank1) = ddp_run
    assert rank0["errors"] == rank1["errors"]
    assert rank0["errors"]["batch"] == ("ValueError: batch_p=5 identities per batch on each of 2 processes needs "
                                        "10, but the training set has only 8 identities")
    assert rank0["errors"]["exists"].startswith("FileExistsError: ") and "overwrite" in rank0["errors"]["exists"]
    assert not (base / "full-rank1").exists() and not (base / "other-rank0").exists()
