"""reidfast.train: a tiny end-to-end run on the synthetic dataset, resume, overwrite protection, config errors.

The dataset is 8 training identities at 64 x 32 with a flatter image-count distribution (zipf_a=1.1, about
210 training images) than the default, so two epochs are ~24 optimiser steps: enough for the loss to fall
and for mAP to clear the untrained baseline reliably with the fixed seed.
"""
from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from reidfast.data import load_market1501, make_synthetic_reid
from reidfast.models import ReIDModel
from reidfast.train import TrainConfig, build_model, evaluate_model, train

TINY = dict(epochs=2, batch_p=4, batch_k=4, lr=3e-3, warmup_epochs=0, milestones=(), height=64, width=32,
            model_width=16, erasing_p=0.0, eval_every=1, seed=0, progress=False, device="cpu")

pytestmark = pytest.mark.filterwarnings("ignore:number of gallery samples")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_reid(root, num_train_ids=8, num_test_ids=8, num_cameras=3, image_size=(64, 32), zipf_a=1.1)
    return load_market1501(root)


@pytest.fixture(scope="module")
def full_run(dataset, tmp_path_factory):
    """Two uninterrupted epochs (progress bar on, log captured)."""
    out = tmp_path_factory.mktemp("full")
    messages = []
    result = train(dataset, TrainConfig(**{**TINY, "progress": True}), out, log=messages.append)
    return out, result, messages


def test_loss_falls_and_map_beats_the_untrained_model(dataset, full_run):
    _, result, messages = full_run
    config = TrainConfig(**TINY)
    torch.manual_seed(config.seed)  # train() seeds the same way before building the model
    untrained = evaluate_model(build_model(dataset.num_train_pids, config), dataset, config).mAP
    first, second = result["history"]
    assert first["steps"] >= 8 and second["steps"] >= 8
    assert second["loss"] < first["loss"] - 0.3
    assert second["step_losses"][-1] < first["step_losses"][0]
    assert 0.0 <= first["fraction_active"] <= 1.0
    trained = result["final"]["ranking"]["mAP"]
    assert trained > untrained + 0.05, (untrained, trained)
    assert len(messages) == 2 and "epoch 2/2" in messages[1] and "mAP" in messages[1]
    assert "to go for 1 more epochs" in messages[0] and "to go" not in messages[1]  # the first epoch's estimate
    assert isinstance(result["model"], ReIDModel)


def test_outputs_are_written_atomically(full_run):
    out, result, _ = full_run
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "metrics.json"]  # no temp files left behind
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_classes"] == 8 and metrics["config"]["batch_k"] == 4
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["final"]["ranking"]["mAP"] == pytest.approx(result["final"]["ranking"]["mAP"])
    assert metrics["history"][1]["eval"]["num_query"] == 8
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 2
    assert {"model", "optimizer", "scheduler", "scaler", "rng"} <= set(checkpoint)


def test_resume_gives_the_same_next_step_loss(dataset, full_run, tmp_path):
    _, full, _ = full_run
    first = train(dataset, TrainConfig(**{**TINY, "epochs": 1}), tmp_path, log=None)
    assert first["history"][0]["step_losses"] == pytest.approx(full["history"][0]["step_losses"], rel=1e-6)
    resumed = train(dataset, TrainConfig(**TINY), tmp_path, resume=tmp_path / "checkpoint.pt", log=None)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    expected, got = full["history"][1]["step_losses"], resumed["history"][1]["step_losses"]
    assert got[0] == pytest.approx(expected[0], rel=1e-6)
    assert got == pytest.approx(expected, rel=1e-5)
    assert resumed["final"]["ranking"]["mAP"] == pytest.approx(full["final"]["ranking"]["mAP"], abs=1e-6)
    full_checkpoint = torch.load(full_run[0] / "checkpoint.pt", weights_only=True)
    resumed_checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert resumed_checkpoint["scheduler"]["last_epoch"] == full_checkpoint["scheduler"]["last_epoch"] == 2
    for name, tensor in full_checkpoint["model"].items():
        assert torch.allclose(resumed_checkpoint["model"][name].float(), tensor.float(), rtol=1e-4, atol=1e-6), name


def test_learning_rate_schedule_warms_up_then_steps_down():
    from reidfast.train import _WarmupMultiStep

    factor = _WarmupMultiStep(warmup_epochs=4, warmup_factor=0.01, milestones=(6, 8), gamma=0.1)
    values = [factor(epoch) for epoch in range(10)]
    assert values[:5] == pytest.approx([0.01, 0.2575, 0.505, 0.7525, 1.0])
    assert values[5:] == pytest.approx([1.0, 0.1, 0.1, 0.01, 0.01])
    assert _WarmupMultiStep(0, 0.01, (), 0.1)(0) == 1.0


def test_existing_outputs_are_not_overwritten(dataset, full_run, tmp_path):
    out, _, _ = full_run
    before = {name: (out / name).read_bytes() for name in ("checkpoint.pt", "metrics.json")}
    with pytest.raises(FileExistsError, match="overwrite"):
        train(dataset, TrainConfig(**{**TINY, "epochs": 1}), out, log=None)
    assert {name: (out / name).read_bytes() for name in before} == before
    # a user's metrics.json alone is protected too; other files in the folder are left alone
    (tmp_path / "metrics.json").write_text("{\"mine\": 1}")
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        train(dataset, TrainConfig(**{**TINY, "epochs": 1}), tmp_path, log=None)
    assert (tmp_path / "metrics.json").read_text() == "{\"mine\": 1}"
    result = train(dataset, TrainConfig(**{**TINY, "epochs": 1, "eval_every": 0}), tmp_path, overwrite=True,
                   log=None)
    assert json.loads((tmp_path / "metrics.json").read_text())["history"][0]["epoch"] == 1
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert result["final"] is not None  # the last epoch is always evaluated


@pytest.mark.parametrize("field, value", [
    ("batch_k", 1), ("batch_p", 1), ("epochs", 0), ("epochs", 1.5), ("lr", 0.0), ("lr", float("nan")),
    ("weight_decay", -1.0), ("milestones", (5, 3)), ("gamma", 0.0), ("margin", -0.1), ("margin", "hard"),
    ("label_smoothing", 1.0), ("eval_every", -1), ("device", "tpu"), ("height", 4), ("num_workers", -1),
    ("last_stride", 3), ("warmup_epochs", -2), ("erasing_p", 2.0), ("image_cache", 1),
])
def test_bad_config_values_are_clear_errors(field, value):
    with pytest.raises(ValueError, match=rf"invalid TrainConfig: {field}"):
        TrainConfig(**{**TINY, field: value})


def test_dataset_mismatches_are_clear_errors(dataset, tmp_path):
    with pytest.raises(ValueError, match="batch_p=16 identities per batch.*only 8"):
        train(dataset, TrainConfig(**{**TINY, "batch_p": 16}), tmp_path, log=None)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            train(dataset, TrainConfig(**{**TINY, "device": "cuda"}), tmp_path, log=None)
    with pytest.raises(TypeError, match="TrainConfig"):
        train(dataset, {"epochs": 1}, tmp_path, log=None)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_custom_backbone_model_trains(dataset, tmp_path):
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1))
    model = ReIDModel(dataset.num_train_pids, backbone=backbone, image_size=(64, 32))
    result = train(dataset, TrainConfig(**{**TINY, "epochs": 1}), tmp_path, log=None, model=model)
    assert result["model"] is model and result["history"][0]["steps"] > 0
    assert result["final"]["ranking"]["mAP"] > 0


def test_per_image_data_path_trains_like_the_cached_one(dataset, full_run, tmp_path):
    """image_cache=False: decoded and augmented image by image in a DataLoader (other random draws, same steps)."""
    _, full, _ = full_run
    config = TrainConfig(**{**TINY, "epochs": 1, "image_cache": False})
    result = train(dataset, config, tmp_path, log=None)
    cached = full["history"][0]
    first = result["history"][0]
    assert first["steps"] == cached["steps"]
    assert first["step_losses"] != pytest.approx(cached["step_losses"], rel=1e-6)  # another augmentation stream
    assert first["step_losses"][-1] < first["step_losses"][0]
    assert first["loss"] == pytest.approx(cached["loss"], rel=0.15)
