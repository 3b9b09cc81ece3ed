"""`reidfast demo` end to end on a small synthetic image set, and the CLI's argument errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reidfast.cli import main
from reidfast.data import synthetic_embeddings
from reidfast.demo import demo_output_files


def test_synthetic_embeddings_are_deterministic_and_shaped():
    query_a, gallery_a = synthetic_embeddings(num_ids=20, num_distractors=10, seed=3)
    query_b, gallery_b = synthetic_embeddings(num_ids=20, num_distractors=10, seed=3)
    np.testing.assert_array_equal(gallery_a.features, gallery_b.features)
    assert query_a.features.shape == (20, 128) and query_a.features.dtype == np.float32
    assert sorted(set(query_a.pids.tolist())) == list(range(1, 21))
    assert (gallery_a.pids == 0).sum() == 10
    assert not np.array_equal(synthetic_embeddings(num_ids=20, num_distractors=10, seed=4)[1].features, gallery_a.features)


SMALL_DEMO = ["--train-ids", "16", "--test-ids", "8", "--epochs", "2", "--device", "cpu", "--quiet"]


def test_demo_runs_end_to_end_and_writes_every_output(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *SMALL_DEMO]) == 0
    printed = capsys.readouterr().out
    for stage in range(1, 8):
        assert f"[{stage}/7]" in printed
    assert "untrained model" in printed and "re-ranking" in printed and "ROC AUC" in printed
    for path in demo_output_files(out):
        assert path.is_file() and path.stat().st_size > 0, path
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"]["num_train_ids"] == 16 and metrics["config"]["epochs"] == 2
    for run in ("untrained", "trained"):
        assert 0.0 <= metrics[run]["ranking"]["mAP"] <= 1.0
    assert metrics["trained"]["reranked"] is not None and metrics["trained"]["verification"] is not None
    assert len(metrics["trained"]["ranking"]["cmc"]) >= 10
    assert set(metrics["seconds"]) >= {"data", "eda", "baseline", "train", "evaluate", "pictures", "total"}
    summary = (out / "summary.md").read_text()
    assert "| trained" in summary and "![CMC](cmc.png)" in summary
    from PIL import Image

    with Image.open(out / "ranked_results.png") as grid:
        assert grid.width > 10 * 32 and grid.height > 64


def test_demo_never_overwrites_without_permission(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "summary.md").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(out), *SMALL_DEMO])
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "summary.md").read_text() == "mine"
    assert not (out / "data").exists()  # refused before doing any work


def test_demo_rejects_a_device_it_cannot_use(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(tmp_path / "demo"), "--device", "cuda"])
    assert exit_info.value.code == 2 and "--device" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["demo", "--epochs", "0"], ["demo", "--train-ids", "many"], ["bogus"], []])
def test_cli_argument_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_eda_command_writes_a_report_and_never_overwrites(tmp_path, capsys):
    from reidfast.data import make_synthetic_reid

    make_synthetic_reid(tmp_path / "data", num_train_ids=8, num_test_ids=8, num_cameras=3, seed=1)
    out = tmp_path / "eda"
    assert main(["eda", str(tmp_path / "data"), "--out", str(out)]) == 0
    assert "EDA report written" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert "train" in report and (out / "images_per_identity.png").stat().st_size > 0
    with pytest.raises(SystemExit) as exit_info:
        main(["eda", str(tmp_path / "data"), "--out", str(out)])
    assert exit_info.value.code == 2 and "refusing to overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eda", str(tmp_path / "missing")])
    assert "missing folder" in capsys.readouterr().err


def test_train_command_trains_and_reports_bad_settings(tmp_path, capsys):
    from reidfast.data import make_synthetic_reid

    make_synthetic_reid(tmp_path / "data", num_train_ids=6, num_test_ids=6, num_cameras=3, seed=2,
                        image_size=(64, 32), zipf_a=1.1)
    out = tmp_path / "run"
    argv = ["train", "--data", str(tmp_path / "data"), "--out", str(out), "--epochs", "1", "--batch-p", "3",
            "--batch-k", "2", "--height", "64", "--width", "32", "--device", "cpu"]
    assert main(argv) == 0
    assert (out / "checkpoint.pt").exists() and (out / "metrics.json").exists()
    assert "final: mAP" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(argv)  # the run's files exist: refused without --overwrite
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(argv[:-2] + ["--batch-k", "1"])
    assert exit_info.value.code == 2 and "batch_k" in capsys.readouterr().err
