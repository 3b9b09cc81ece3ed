"""The example scripts run as a user would run them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from reidfast.data import synthetic_embeddings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_rerank_features_from_a_saved_file(tmp_path):
    query, gallery = synthetic_embeddings(num_ids=60, num_distractors=50, seed=1)
    path = tmp_path / "features.npz"
    np.savez(path, query_features=query.features, gallery_features=gallery.features, query_pids=query.pids,
             gallery_pids=gallery.pids, query_camids=query.camids, gallery_camids=gallery.camids)
    result = subprocess.run([sys.executable, str(EXAMPLES / "rerank_features.py"), str(path), "--k1", "10"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].strip().startswith("plain:") and lines[1].strip().startswith("re-ranked:")
    assert "queries)" in lines[0] and "mAP" in lines[1]


def test_rerank_features_reports_missing_arrays(tmp_path):
    path = tmp_path / "partial.npz"
    np.savez(path, query_features=np.zeros((2, 3), np.float32))
    result = subprocess.run([sys.executable, str(EXAMPLES / "rerank_features.py"), str(path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "missing arrays" in result.stderr


def test_drop_in_triplet_trains():
    result = subprocess.run([sys.executable, str(EXAMPLES / "drop_in_triplet.py"), "--epochs", "2", "--device", "cpu"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    before = float(lines[0].rsplit(" ", 1)[1].rstrip("%"))
    after = float(lines[-1].rsplit(" ", 1)[1].rstrip("%"))
    assert lines[-1].startswith("epoch 2") and after > before


def test_train_example_runs_and_the_loss_falls(tmp_path):
    from reidfast.data import make_synthetic_reid

    make_synthetic_reid(tmp_path / "data", num_train_ids=8, num_test_ids=8, num_cameras=3, seed=2,
                        image_size=(64, 32), zipf_a=1.1)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "train.py"), "--data", str(tmp_path / "data"), "--epochs", "2",
         "--height", "64", "--width", "32", "--p", "4", "--k", "4", "--lr", "3e-3", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    epochs = [line for line in result.stdout.splitlines() if line.startswith("epoch")]
    losses = [float(line.split("loss ")[1].split()[0]) for line in epochs]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert "untrained mAP" in result.stdout
