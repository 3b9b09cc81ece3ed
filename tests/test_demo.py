"""`reidfast demo` end to end on a small synthetic set, and the CLI's argument errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from reidfast.cli import main
from reidfast.demo import synthetic_embeddings


def test_synthetic_embeddings_are_deterministic_and_shaped():
    query_a, gallery_a = synthetic_embeddings(num_ids=20, num_distractors=10, seed=3)
    query_b, gallery_b = synthetic_embeddings(num_ids=20, num_distractors=10, seed=3)
    np.testing.assert_array_equal(gallery_a.features, gallery_b.features)
    assert query_a.features.shape == (20, 128) and query_a.features.dtype == np.float32
    assert sorted(set(query_a.pids.tolist())) == list(range(1, 21))
    assert (gallery_a.pids == 0).sum() == 10
    assert not np.array_equal(synthetic_embeddings(num_ids=20, num_distractors=10, seed=4)[1].features, gallery_a.features)


def test_demo_runs_and_reranking_helps(tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(["demo", "--ids", "120", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "k-reciprocal" in printed and "mAP" in printed
    metrics = json.loads(out.read_text())
    assert 0.3 < metrics["plain"]["mAP"] < 0.95
    assert metrics["reranked"]["mAP"] > metrics["plain"]["mAP"]


def test_demo_never_overwrites_without_permission(tmp_path):
    out = tmp_path / "metrics.json"
    out.write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--ids", "5", "--out", str(out)])
    assert exit_info.value.code == 2
    assert out.read_text() == "mine"


@pytest.mark.parametrize("argv", [["demo", "--ids", "0"], ["demo", "--ids", "many"], ["bogus"], []])
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
