"""`reidfast eval` and reidfast.train.load_checkpoint_model on a tiny synthetic dataset after a 1-epoch train.

The metrics the command prints and writes must be those of evaluate_model on the checkpoint's model (and,
since the checkpoint holds the model train() evaluated last, train()'s own final metrics).
"""
from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch
from torch import nn

from reidfast.cli import main
from reidfast.data import load_market1501, make_synthetic_reid
from reidfast.models import ReIDModel
from reidfast.train import TrainConfig, evaluate_model, load_checkpoint_model, train

TINY = dict(epochs=1, batch_p=4, batch_k=4, lr=3e-3, warmup_epochs=0, milestones=(), height=32, width=16,
            model_width=8, erasing_p=0.0, seed=0, progress=False, device="cpu", rerank=True)

pytestmark = pytest.mark.filterwarnings("ignore:number of gallery samples")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(dataset root, checkpoint path, train() result) of a 1-epoch run on 6 identities at 32 x 16."""
    root = tmp_path_factory.mktemp("data")
    make_synthetic_reid(root, num_train_ids=6, num_test_ids=6, num_cameras=3, image_size=(32, 16), zipf_a=1.1)
    out = tmp_path_factory.mktemp("run")
    result = train(load_market1501(root), TrainConfig(**TINY), out, log=None)
    return root, out / "checkpoint.pt", result


def run_eval(*args: str) -> int:
    return main(["eval", *map(str, args)])


def test_metrics_match_evaluate_model_and_the_training_run(trained, tmp_path, capsys):
    root, checkpoint, result = trained
    out = tmp_path / "reports" / "metrics.json"  # a missing parent folder is created
    assert run_eval("--data", root, "--checkpoint", checkpoint, "--rerank", "--device", "cpu", "--out", out) == 0
    printed = capsys.readouterr().out

    loaded = load_checkpoint_model(checkpoint, device="cpu")
    assert loaded.epoch == 1 and loaded.num_classes == 6 and not loaded.model.training
    for name, tensor in result["model"].state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    expected = evaluate_model(loaded.model, load_market1501(root), loaded.config, rerank=True)
    report = json.loads(out.read_text())
    assert report["epoch"] == 1 and report["protocol"] == "market1501" and report["max_rank"] == 50
    assert report["num_query"] == expected.num_query and report["num_gallery"] == expected.num_gallery
    for key in ("ranking", "reranked"):  # same model, images and batches in this process: the same numbers
        assert report[key] == expected.to_dict()[key]
    assert report["ranking"]["mAP"] == pytest.approx(result["final"]["ranking"]["mAP"], abs=1e-6)
    assert report["reranked"]["mAP"] == pytest.approx(result["final"]["reranked"]["mAP"], abs=1e-6)

    rows = {line.split("|")[1].strip(): line for line in printed.splitlines() if line.startswith("| ")}
    assert f"{expected.mAP:6.1%}" in rows["euclidean distance"]
    assert f"{expected.reranked.mAP:6.1%}" in rows["+ re-ranking (k1=20, k2=6)"]
    assert f"{expected.rank1:6.1%}" in rows["euclidean distance"]
    assert f"{expected.num_query} queries x {expected.num_gallery} gallery images" in printed


def test_options_reach_the_evaluator_and_no_json_unless_asked(trained, tmp_path, monkeypatch, capsys):
    root, checkpoint, _ = trained
    monkeypatch.chdir(tmp_path)
    assert run_eval("--data", root, "--checkpoint", checkpoint, "--device", "cpu", "--batch-size", "5",
                    "--max-rank", "5", "--protocol", "cuhk03") == 0
    printed = capsys.readouterr().out
    assert os.listdir(tmp_path) == []  # nothing written without --out
    assert run_eval("--data", root, "--checkpoint", checkpoint, "--device", "cpu", "--max-rank", "5",
                    "--out", "short.json") == 0
    capsys.readouterr()

    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    short = json.loads((tmp_path / "short.json").read_text(), parse_constant=reject)
    assert short["ranking"]["rank10"] is None and len(short["ranking"]["cmc"]) == 5  # n/a past --max-rank
    loaded = load_checkpoint_model(checkpoint, device="cpu")
    expected = evaluate_model(loaded.model, load_market1501(root), loaded.config, rerank=False, batch_size=5,
                              max_rank=5, protocol="cuhk03")
    assert len(expected.cmc) == 5
    row = next(line for line in printed.splitlines() if line.startswith("| euclidean distance"))
    cells = [cell.strip() for cell in row.split("|")[2:-1]]
    assert cells == [f"{v:.1%}" for v in (expected.rank1, expected.rank5)] + ["n/a"] + [
        f"{v:.1%}" for v in (expected.mAP, expected.mINP)]
    assert "re-rank" not in printed and "cuhk03 protocol" in printed


def test_reranking_parameters_reach_the_evaluator(trained, tmp_path, capsys):
    root, checkpoint, _ = trained
    out = tmp_path / "k.json"
    assert run_eval("--data", root, "--checkpoint", checkpoint, "--device", "cpu", "--rerank", "--k1", "3",
                    "--k2", "2", "--lambda-value", "0.5", "--out", out) == 0
    assert "+ re-ranking (k1=3, k2=2)" in capsys.readouterr().out
    loaded = load_checkpoint_model(checkpoint, device="cpu")
    expected = evaluate_model(loaded.model, load_market1501(root), loaded.config, rerank=True, k1=3, k2=2,
                              lambda_value=0.5)
    default = evaluate_model(loaded.model, load_market1501(root), loaded.config, rerank=True)
    report = json.loads(out.read_text())
    assert report["reranked"] == expected.to_dict()["reranked"]
    assert report["rerank"] == {"k1": 3, "k2": 2, "lambda_value": 0.5}
    assert report["reranked"]["cmc"] != default.to_dict()["reranked"]["cmc"] or \
        report["reranked"]["mAP"] != default.to_dict()["reranked"]["mAP"]
    with pytest.raises(SystemExit) as exit_info:  # k2 > k1 is the op's clear error, exit 2
        run_eval("--data", root, "--checkpoint", checkpoint, "--device", "cpu", "--rerank", "--k1", "2", "--k2", "3")
    assert exit_info.value.code == 2 and "k2" in capsys.readouterr().err


def test_an_existing_out_file_is_never_overwritten_without_overwrite(trained, tmp_path, capsys):
    root, checkpoint, _ = trained
    out = tmp_path / "metrics.json"
    out.write_text("my notes")
    with pytest.raises(SystemExit) as exit_info:
        run_eval("--data", root, "--checkpoint", checkpoint, "--device", "cpu", "--out", out)
    assert exit_info.value.code == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "my notes"
    assert run_eval("--data", root, "--checkpoint", checkpoint, "--device", "cpu", "--out", out, "--overwrite") == 0
    assert json.loads(out.read_text())["ranking"]["mAP"] >= 0
    assert sorted(os.listdir(tmp_path)) == ["metrics.json"]  # no temp file left behind


def _write_folder_dataset(root, source):
    """A train-only `root/<pid>/<img>` dataset built from a few synthetic images."""
    images = sorted((source / "bounding_box_train").glob("*.jpg"))[:4]
    for i, image in enumerate(images):
        (root / str(i % 2)).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, root / str(i % 2) / image.name)


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("folder", "is a folder.*did you mean"),
    ("text", "not a checkpoint written by reidfast train.*torch.load failed"),
    ("foreign-torch", "not a checkpoint written by reidfast train.*missing model, config, num_classes, epoch"),
    ("custom-model", "holds a custom model"),
    ("no-query", "0 query and 0 gallery images; evaluation needs both"),
    ("empty-query-folder", "empty query split"),
    ("bad-device", "device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
])
def test_clear_errors(trained, tmp_path, capsys, case, message):
    root, checkpoint, _ = trained
    data, device = root, "cpu"
    if case == "missing":
        checkpoint = tmp_path / "nope.pt"
    elif case == "folder":
        checkpoint = checkpoint.parent
    elif case == "text":
        checkpoint = tmp_path / "notes.pt"
        checkpoint.write_text("not a checkpoint")
    elif case == "foreign-torch":
        checkpoint = tmp_path / "weights.pt"
        torch.save({"state_dict": {"w": torch.zeros(2)}}, checkpoint)
    elif case == "custom-model":
        torch.manual_seed(0)
        backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        model = ReIDModel(6, backbone=backbone, image_size=(32, 16))
        train(load_market1501(root), TrainConfig(**{**TINY, "rerank": False}), tmp_path / "custom", log=None,
              model=model)
        checkpoint = tmp_path / "custom" / "checkpoint.pt"
    elif case == "no-query":
        data = tmp_path / "folder"
        _write_folder_dataset(data, root)
    elif case == "empty-query-folder":
        data = tmp_path / "market"
        shutil.copytree(root, data)
        for image in (data / "query").iterdir():
            image.unlink()
    elif case == "bad-device":
        device = "tpu"
    layout = "folder" if case == "no-query" else "market1501"
    with pytest.raises(SystemExit) as exit_info:
        run_eval("--data", data, "--layout", layout, "--checkpoint", checkpoint, "--device", device)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("reidfast eval: error:")
    assert re.search(message, error), error


@pytest.mark.parametrize("argv, message", [
    (["--layout", "market"], "invalid choice: 'market'"),
    (["--max-rank", "0"], "expected a positive integer"),
    (["--batch-size", "-3"], "expected a positive integer"),
    (["--protocol", "duke"], "invalid choice: 'duke'"),
])
def test_argument_errors(trained, capsys, argv, message):
    root, checkpoint, _ = trained
    with pytest.raises(SystemExit) as exit_info:
        run_eval("--data", root, "--checkpoint", checkpoint, *argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_checkpoint_loader_keeps_the_training_config(trained):
    _, checkpoint, result = trained
    loaded = load_checkpoint_model(checkpoint, device="cpu")
    assert loaded.config.to_dict() == {**result["config"], "device": "cpu"}
    assert loaded.dataset == "market1501"
    assert next(loaded.model.parameters()).device == torch.device("cpu")
