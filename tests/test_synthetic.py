"""Synthetic Market-1501-layout generator: layout, filenames, statistics, determinism, safety (its speed: benchmarks/test_bench_synthetic.py)."""
from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidfast.data.synthetic import MARKER_NAME, make_synthetic_reid

PATTERN = re.compile(r"^(-1|\d{4})_c(\d)s1_(\d{6})_(\d{2})\.jpg$")
SMALL = dict(num_train_ids=40, num_test_ids=30, num_cameras=4, seed=3, image_size=(64, 32))


def _scan(root: Path) -> dict[str, list[tuple[int, int, str]]]:
    out = {}
    for split in ("bounding_box_train", "bounding_box_test", "query"):
        recs = []
        for f in sorted((root / split).iterdir()):
            m = PATTERN.match(f.name)
            assert m, f"bad filename {f.name}"
            recs.append((int(m.group(1)), int(m.group(2)), f.name))
        out[split] = recs
    return out


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.jpg"))}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "small"
    stats = make_synthetic_reid(root, **SMALL)
    return root, stats, _scan(root)


def test_layout_filenames_and_counts(small):
    root, stats, recs = small
    assert (root / MARKER_NAME).is_file()
    train, gallery, query = recs["bounding_box_train"], recs["bounding_box_test"], recs["query"]
    assert len(train) == stats["num_train_images"]
    assert len(query) == stats["num_query_images"] == SMALL["num_test_ids"]
    assert len(gallery) == stats["num_gallery_images"]
    for split in recs.values():
        for pid, cam, name in split:
            assert 1 <= cam <= SMALL["num_cameras"], name
    # junk (-1) and distractors (0000) only in the gallery
    assert sum(p == -1 for p, _, _ in gallery) == stats["num_junk"] >= 1
    assert sum(p == 0 for p, _, _ in gallery) == stats["num_distractors"] >= 1
    assert all(p > 0 for p, _, _ in train + query)
    train_ids = {p for p, _, _ in train}
    test_ids = {p for p, _, _ in query}
    assert len(train_ids) == SMALL["num_train_ids"] and len(test_ids) == SMALL["num_test_ids"]
    assert not train_ids & test_ids
    assert {p for p, _, _ in gallery if p > 0} == test_ids
    # all cameras are used; JPEGs of the requested size
    assert {c for _, c, _ in train} == set(range(1, SMALL["num_cameras"] + 1))
    for split, (pid, cam, name) in [("query", query[0]), ("bounding_box_train", train[-1]), ("bounding_box_test", gallery[0])]:
        with Image.open(root / split / name) as im:
            assert im.format == "JPEG" and im.size == (32, 64)
            assert np.asarray(im).std() > 5  # not blank


def test_every_query_has_cross_camera_gallery(small):
    _, stats, recs = small
    g = defaultdict(list)
    for pid, cam, _ in recs["bounding_box_test"]:
        g[pid].append(cam)
    same_cam = 0
    for pid, qcam, _ in recs["query"]:
        assert any(c != qcam for c in g[pid]), f"query {pid} has no cross-camera gallery image"
        same_cam += sum(c == qcam for c in g[pid])
    assert same_cam == stats["num_same_camera_gallery"] >= 1  # the protocol has something to drop


def test_images_per_identity_long_tailed(small):
    _, stats, recs = small
    per = defaultdict(int)
    for pid, _, _ in recs["bounding_box_train"]:
        per[pid] += 1
    counts = np.array(sorted(per.values()))
    assert counts.min() >= 2
    assert counts.max() >= 4 * np.median(counts), counts  # a heavy tail, not uniform
    assert (counts == counts.min()).mean() > 0.3  # most identities are small
    assert {f"{p:04d}": n for p, n in per.items()} == stats["train_images_per_id"]


def test_deterministic_for_seed(tmp_path, small):
    root, _, _ = small
    make_synthetic_reid(tmp_path / "a", **SMALL)
    assert _digest(tmp_path / "a") == _digest(root)  # same names and bytes
    make_synthetic_reid(tmp_path / "b", **dict(SMALL, seed=4))
    other = _digest(tmp_path / "b")
    assert set(other) != set(_digest(root))
    common = set(other) & set(_digest(root))
    assert all(other[k] != _digest(root)[k] for k in common)


def test_reuse_and_overwrite_only_own_files(tmp_path):
    kw = dict(num_train_ids=4, num_test_ids=4, num_cameras=3, seed=0, image_size=(32, 16))
    root = tmp_path / "ds"
    first = make_synthetic_reid(root, **kw)
    assert first["reused"] is False
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.jpg")}
    again = make_synthetic_reid(root, **kw)
    assert again["reused"] is True and again["num_train_images"] == first["num_train_images"]
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.jpg")} == before
    (root / "my_notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_synthetic_reid(root, **dict(kw, seed=1))
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.jpg")} == before
    new = make_synthetic_reid(root, **dict(kw, seed=1), overwrite=True)
    assert new["reused"] is False and new["seed"] == 1
    assert (root / "my_notes.txt").read_text() == "keep me"
    fresh = tmp_path / "fresh"
    make_synthetic_reid(fresh, **dict(kw, seed=1))
    assert _digest(root) == _digest(fresh)  # no stale files from seed 0 remain


@pytest.mark.parametrize("overwrite", [False, True])
def test_refuses_foreign_folder(tmp_path, overwrite):
    root = tmp_path / "user"
    root.mkdir()
    (root / "holiday.jpg").write_bytes(b"not yours")
    with pytest.raises(FileExistsError, match="non-empty"):
        make_synthetic_reid(root, num_train_ids=2, num_test_ids=2, num_cameras=2, image_size=(32, 16), overwrite=overwrite)
    assert sorted(p.name for p in root.iterdir()) == ["holiday.jpg"]
    assert (root / "holiday.jpg").read_bytes() == b"not yours"


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError):
        make_synthetic_reid(tmp_path / "x", num_cameras=1)
    with pytest.raises(ValueError):
        make_synthetic_reid(tmp_path / "y", num_train_ids=0)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_tiny_run(tmp_path):
    stats = make_synthetic_reid(tmp_path / "tiny", num_train_ids=5, num_test_ids=5, num_cameras=2, image_size=(32, 16))
    assert stats["num_query_images"] == 5
    assert stats["num_train_ids"] == 5 and stats["num_test_ids"] == 5 and stats["num_cameras"] == 2


def test_default_size(tmp_path):
    """The defaults README documents (its generation time: benchmarks/test_bench_synthetic.py)."""
    stats = make_synthetic_reid(tmp_path / "default")
    assert stats["num_train_ids"] == 100 and stats["num_test_ids"] == 100 and stats["num_cameras"] == 6
    assert stats["image_size"] == [128, 64]
