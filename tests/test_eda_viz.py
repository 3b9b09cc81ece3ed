"""EDA statistics/report and result pictures on a small generated dataset."""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidfast.data.synthetic import make_synthetic_reid
from reidfast.eda import dataset_statistics, gini, write_eda_report
from reidfast.viz import plot_cmc, plot_ranked_results, plot_tsne, ranked_result_status

PATTERN = re.compile(r"^(-1|\d{4})_c(\d)s1_\d{6}_\d{2}\.jpg$")


@dataclass(frozen=True)
class Rec:  # stands in for the loaders' ImageRecord: only .path .pid .camid are used
    path: str
    pid: int
    camid: int


def _records(folder: Path) -> list[Rec]:
    out = []
    for f in sorted(folder.glob("*.jpg")):
        m = PATTERN.match(f.name)
        out.append(Rec(str(f), int(m.group(1)), int(m.group(2)) - 1))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eda") / "ds"
    make_synthetic_reid(root, num_train_ids=25, num_test_ids=15, num_cameras=4, seed=1, image_size=(64, 32))
    return {s: _records(root / d) for s, d in [("train", "bounding_box_train"), ("query", "query"), ("gallery", "bounding_box_test")]}


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def _varied(a: np.ndarray) -> bool:
    return a.std() > 10 and len(np.unique(a.reshape(-1, 3), axis=0)) > 20


def test_gini_known_values():
    assert gini([5, 5, 5, 5]) == pytest.approx(0.0)
    assert gini([0, 0, 0, 10]) == pytest.approx(0.75)
    assert gini([1, 3]) == pytest.approx(0.25)
    assert gini([]) == 0.0


def test_statistics_match_direct_counting(data):
    stats = dataset_statistics(data["train"], data["query"], data["gallery"])
    for split, recs in data.items():
        s = stats[split]
        ident = [r for r in recs if r.pid > 0 or (split == "train" and r.pid == 0)]
        per_id = Counter(r.pid for r in ident)
        assert s["num_images"] == len(recs)
        assert s["num_identities"] == len(per_id)
        assert s["num_cameras"] == len({r.camid for r in recs})
        assert s["num_junk"] == sum(r.pid == -1 for r in recs)
        assert s["num_distractors"] == (0 if split == "train" else sum(r.pid == 0 for r in recs))
        assert s["images_per_identity"] == dict(sorted(per_id.items()))
        c = np.array(list(per_id.values()))
        assert s["imbalance_ratio"] == pytest.approx(c.max() / c.min())
        assert s["images_per_identity_summary"]["mean"] == pytest.approx(c.mean())
        ipc = defaultdict(set)
        for r in ident:
            ipc[r.camid].add(r.pid)
        assert s["identities_per_camera"] == {cam: len(ipc[cam]) for cam in sorted({r.camid for r in recs})}
        assert s["image_width"]["min"] == s["image_width"]["max"] == 32
        assert s["image_height"]["mean"] == 64
    assert stats["gallery"]["num_junk"] >= 1 and stats["gallery"]["num_distractors"] >= 1
    assert stats["train"]["gini"] > 0.1  # long-tailed generator shows up as imbalance
    assert stats["query_ids_missing_in_gallery"] == []
    assert stats["train_test_id_overlap"] == 0


def test_report_written_and_not_overwritten(data, tmp_path):
    stats = dataset_statistics(data["train"], data["query"], data["gallery"], sample_sizes=20)
    out = tmp_path / "eda"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    paths = write_eda_report(stats, out, data)
    assert set(paths) == {"report.md", "images_per_identity.png", "identities_per_camera.png", "image_sizes.png", "examples.png"}
    text = paths["report.md"].read_text()
    assert f"| train | {len(data['train'])} | 25 | 4 |" in text
    assert f"| query | {len(data['query'])} | 15 |" in text
    sizes = {"images_per_identity.png": (320, 1200), "identities_per_camera.png": (320, 600), "image_sizes.png": (400, 450)}
    for name, shape in sizes.items():
        a = _png(paths[name])
        assert a.shape[:2] == shape, name
        assert _varied(a), name
    assert _varied(_png(paths["examples.png"]))
    before = paths["report.md"].stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="report.md"):
        write_eda_report(stats, out)
    assert paths["report.md"].stat().st_mtime_ns == before
    write_eda_report(stats, out, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"


def test_plot_cmc(tmp_path):
    ranks = np.arange(1, 51)
    p = plot_cmc({"baseline": 1 - 0.5 * np.exp(-ranks / 5), "re-ranked": 1 - 0.3 * np.exp(-ranks / 5)}, tmp_path / "sub" / "cmc.png")
    a = _png(p)
    assert a.shape == (400, 600, 3) and _varied(a)
    with pytest.raises(ValueError):
        plot_cmc({}, tmp_path / "x.png")


def test_plot_ranked_results_borders(data, tmp_path):
    q, g = data["query"][:6], data["gallery"]
    rng = np.random.default_rng(0)
    q_pids = np.array([r.pid for r in q]); g_pids = np.array([r.pid for r in g])
    q_cams = np.array([r.camid for r in q]); g_cams = np.array([r.camid for r in g])
    dist = rng.random((len(q), len(g)))
    dist[q_pids[:, None] == g_pids[None, :]] -= 0.5  # true matches tend to rank first
    dist[0, np.flatnonzero(g_pids == -1)[0]] = -5  # a junk image ranked first for query 0
    topk, cell, border, gap = 5, (64, 32), 4, 6
    p = plot_ranked_results([r.path for r in q], [r.path for r in g], dist, q_pids, g_pids, q_cams, g_cams,
                            tmp_path / "ranks.png", topk=topk, num_queries=4, cell_size=cell, border=border, gap=gap)
    a = _png(p)
    bw, bh = cell[1] + 2 * border, cell[0] + 2 * border
    rows = 4
    assert a.shape == (gap + rows * (bh + 14 + gap), gap + (topk + 1) * (bw + gap) + gap, 3)
    assert _varied(a)
    colors = {"correct": (0, 170, 0), "wrong": (220, 0, 0), "ignored": (150, 150, 150)}
    qidx = np.unique(np.linspace(0, len(q) - 1, rows).round().astype(int))
    seen = set()
    for r, qi in enumerate(qidx):
        order = np.argsort(dist[qi], kind="stable")[:topk]
        status = ranked_result_status(order, q_pids[qi], q_cams[qi], g_pids, g_cams)
        y = gap + r * (bh + 14 + gap)
        assert tuple(a[y + 1, gap + 1]) == (0, 0, 0)  # query border
        for k, st in enumerate(status):
            x = gap + (k + 1) * (bw + gap) + gap
            assert tuple(a[y + 1, x + 1]) == colors[st], (r, k, st)
            seen.add(st)
    assert status is not None and {"correct", "ignored"} <= seen
    assert ranked_result_status(np.array([0]), 5, 1, np.array([5]), np.array([1])) == ["ignored"]
    assert ranked_result_status(np.array([0]), 5, 1, np.array([5]), np.array([2])) == ["correct"]
    assert ranked_result_status(np.array([0]), 5, 1, np.array([0]), np.array([2])) == ["wrong"]  # distractor


def test_plot_tsne(tmp_path):
    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(6), 10)
    feats = rng.normal(size=(6, 16))[pids] * 5 + rng.normal(size=(60, 16))
    p = plot_tsne(feats, pids, tmp_path / "tsne.png", seed=0)
    a = _png(p)
    assert a.shape == (600, 600, 3) and _varied(a)
    with pytest.raises(ValueError):
        plot_tsne(feats[:5], pids, tmp_path / "bad.png")
