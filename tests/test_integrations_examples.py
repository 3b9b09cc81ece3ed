"""The integration examples run as a user runs them, and the switch changes no number."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import integrations_originals as originals
from reidfast.data import synthetic_embeddings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_example(*args: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))  # this checkout's reidfast
    result = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_pml_training_example_gives_the_same_training_with_each_variant():
    pytest.importorskip("pytorch_metric_learning", reason="the example needs pytorch-metric-learning")
    runs = {}
    for use in ("pml", "reidfast-miner", "reidfast-loss"):
        lines = run_example(EXAMPLES / "pml_training.py", "--use", use, "--epochs", "1", "--num-ids", "60", "--device", "cpu").splitlines()
        before = float(lines[0].rsplit(" ", 1)[1].rstrip("%"))
        loss, after = lines[1].split("loss ")[1].split("  mAP ")
        runs[use] = (before, float(loss), float(after.rstrip("%")))
    assert runs["pml"][2] > runs["pml"][0]  # it trains
    for use in ("reidfast-miner", "reidfast-loss"):
        assert runs[use][1] == pytest.approx(runs["pml"][1], rel=1e-4), use
        assert runs[use][2] == pytest.approx(runs["pml"][2], abs=0.05), use  # mAP in percent


@pytest.mark.parametrize("extra", [[], ["--rerank"], ["--dist-metric", "cosine"]])
def test_torchreid_style_eval_example_prints_torchreids_numbers(extra):
    output = run_example(EXAMPLES / "torchreid_style_eval.py", "--num-ids", "50", *extra)
    printed_map = float(output.split("mAP: ")[1].split("%")[0]) / 100
    printed_rank1 = float(output.split("Rank-1  : ")[1].split("%")[0]) / 100

    query, gallery = synthetic_embeddings(num_ids=50, seed=0)
    qf, gf = torch.from_numpy(query.features), torch.from_numpy(gallery.features)
    metric = "cosine" if "cosine" in extra else "euclidean"
    distmat = originals.torchreid_compute_distance_matrix(qf, gf, metric).numpy()
    if "--rerank" in extra:
        distmat = originals.re_ranking(distmat, originals.torchreid_compute_distance_matrix(qf, qf, metric).numpy(),
                                       originals.torchreid_compute_distance_matrix(gf, gf, metric).numpy())
    cmc, mean_ap = originals.torchreid_evaluate_rank(distmat, query.pids, gallery.pids, query.camids, gallery.camids)
    assert printed_map == pytest.approx(mean_ap, abs=1e-6)
    assert printed_rank1 == pytest.approx(cmc[0], abs=1e-6)
