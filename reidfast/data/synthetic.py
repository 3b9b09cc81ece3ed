"""Built-in synthetic person re-ID dataset written in the Market-1501 layout.

    stats = make_synthetic_reid("data/synth", num_train_ids=100, num_test_ids=100, num_cameras=6, seed=0)

writes ``bounding_box_train/``, ``bounding_box_test/`` and ``query/`` with JPEGs named like Market-1501
(``0002_c1s1_000451_03.jpg``: 4-digit pid, 1-based camera, sequence 1, 6-digit frame, 2-digit detection).
The gallery also holds junk images (pid ``-1``, ignored by the protocol) and distractors (pid ``0000``).

Each identity has its own appearance (colours of head/torso/legs, a torso pattern, figure height/width,
a hat and/or a bag); each camera its own nuisance (illumination gain, colour cast, blur, viewpoint shift,
background colour/texture, partial occlusion). Images per identity are long-tailed (Zipf).
Generation is deterministic for a seed: same parameters, same file names and bytes.

A ``synthetic.json`` marker records the parameters. Calling again with identical parameters reuses the
dataset; different parameters need ``overwrite=True`` and then only the files the marker lists are
replaced. A non-empty folder without the marker is never written into.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._optional import require

__all__ = ["make_synthetic_reid", "synthetic_embeddings", "EmbeddingSplit", "MARKER_NAME", "SYNTHETIC_VERSION"]

MARKER_NAME = "synthetic.json"
SYNTHETIC_VERSION = 1
SPLITS = ("bounding_box_train", "bounding_box_test", "query")


# --------------------------------------------------------------------------------------------------------
# appearance model
# --------------------------------------------------------------------------------------------------------
def _random_identity(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "head": rng.integers(140, 230, 3),  # skin-ish / hair handled by hat
        "torso": rng.integers(0, 256, 3),
        "legs": rng.integers(0, 256, 3),
        "pattern": int(rng.integers(0, 3)),  # 0 plain, 1 stripes, 2 checks
        "pattern_color": rng.integers(0, 256, 3),
        "pattern_period": int(rng.integers(3, 7)),
        "height": float(rng.uniform(0.72, 0.95)),
        "width": float(rng.uniform(0.28, 0.5)),
        "hat": bool(rng.random() < 0.3),
        "hat_color": rng.integers(0, 256, 3),
        "bag": bool(rng.random() < 0.35),
        "bag_color": rng.integers(0, 256, 3),
        "bag_side": int(rng.choice([-1, 1])),
    }


def _random_camera(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "gain": float(rng.uniform(0.6, 1.35)),
        "cast": rng.uniform(0.8, 1.2, 3),
        "blur": float(rng.choice([0.0, 0.0, 0.6, 1.0, 1.5])),
        "shift": float(rng.uniform(-0.15, 0.15)),  # horizontal offset, fraction of width
        "scale": float(rng.uniform(0.82, 1.05)),
        "bg": rng.integers(20, 236, 3),
        "texture": int(rng.integers(0, 3)),  # 0 noise, 1 vertical gradient, 2 tiles
        "occlusion": float(rng.uniform(0.0, 0.4)),
    }


def _render(
    ident: dict[str, Any] | None,
    cam: dict[str, Any],
    rng: np.random.Generator,
    size: tuple[int, int],
    grid: tuple[np.ndarray, np.ndarray],
    quality: int,
    path: Path,
    junk: bool = False,
) -> None:
    """Draw one bounding box (vectorised numpy masks) and save it as a JPEG."""
    H, W = size
    yy, xx = grid
    # background
    bg = cam["bg"].astype(np.float32)
    img = np.empty((H, W, 3), np.float32)
    img[:] = bg
    if cam["texture"] == 0:
        img += rng.normal(0.0, 12.0, (H, W, 1)).astype(np.float32)
    elif cam["texture"] == 1:
        img *= (0.7 + 0.6 * yy / H)[..., None]
    else:
        img += (((yy // 16 + xx // 16) % 2) * 25.0 - 12.0)[..., None]

    if ident is not None:
        s = cam["scale"] * float(rng.uniform(0.95, 1.05))
        h = H * ident["height"] * s
        w = W * ident["width"] * s
        cx = W * (0.5 + cam["shift"]) + rng.normal(0.0, 0.04 * W)
        bottom = H * float(rng.uniform(0.95, 1.0))
        top = bottom - h
        flip = rng.random() < 0.5  # viewpoint: left/right facing
        if junk:  # a fragment of a person: crop far off-centre / truncated
            cx += W * float(rng.choice([-0.45, 0.45]))
            top -= 0.4 * h
        head_cy, head_r = top + 0.09 * h, 0.08 * h
        t0, t1 = top + 0.18 * h, top + 0.56 * h
        # torso
        torso = (yy >= t0) & (yy < t1) & (np.abs(xx - cx) < w / 2)
        if ident["pattern"] == 1:
            pm = ((yy // ident["pattern_period"]) % 2) == 0
        elif ident["pattern"] == 2:
            p = ident["pattern_period"]
            pm = ((yy // p + xx // p) % 2) == 0
        else:
            pm = np.zeros_like(torso)
        img[torso & ~pm] = ident["torso"]
        img[torso & pm] = ident["pattern_color"]
        # arms (torso colour, slightly narrower band beside torso)
        arms = (yy >= t0 + 0.02 * h) & (yy < t1 - 0.05 * h) & (np.abs(xx - cx) >= w / 2) & (np.abs(xx - cx) < w / 2 + 0.12 * w)
        img[arms] = ident["torso"] * 0.85
        # legs
        leg_w = w * 0.2
        legs = (yy >= t1) & (yy < bottom) & (
            (np.abs(xx - (cx - w * 0.2)) < leg_w) | (np.abs(xx - (cx + w * 0.2)) < leg_w)
        )
        img[legs] = ident["legs"]
        # head
        head = (yy - head_cy) ** 2 + ((xx - cx) * 1.1) ** 2 < head_r**2
        img[head] = ident["head"]
        if ident["hat"]:
            hat = (yy >= head_cy - head_r * 1.2) & (yy < head_cy - head_r * 0.3) & (np.abs(xx - cx) < head_r * 1.2)
            img[hat] = ident["hat_color"]
        if ident["bag"]:
            side = ident["bag_side"] * (-1 if flip else 1)
            bx = cx + side * (w / 2 + 0.18 * w)
            bag = (yy >= top + 0.35 * h) & (yy < top + 0.55 * h) & (np.abs(xx - bx) < 0.2 * w)
            img[bag] = ident["bag_color"]
        if flip:
            img = img[:, ::-1]

    # partial occlusion: a random rectangle
    if rng.random() < cam["occlusion"]:
        oh, ow = int(rng.integers(H // 6, H // 2)), int(rng.integers(W // 4, W))
        oy, ox = int(rng.integers(0, H - oh + 1)), int(rng.integers(0, W - ow + 1))
        img[oy : oy + oh, ox : ox + ow] = rng.integers(0, 256, 3)

    # illumination gain (camera + per-image jitter) and colour cast, sensor noise
    img = img * (cam["gain"] * float(rng.uniform(0.9, 1.1))) * cam["cast"]
    img += rng.normal(0.0, 4.0, img.shape).astype(np.float32)
    require("PIL", "writing the synthetic dataset's images")
    from PIL import Image, ImageFilter

    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if cam["blur"] > 0:
        pil = pil.filter(ImageFilter.GaussianBlur(cam["blur"]))
    pil.save(path, format="JPEG", quality=quality, optimize=False, subsampling=2)


def _zipf_counts(rng: np.random.Generator, n: int, a: float, lo: int, hi: int) -> np.ndarray:
    return np.minimum(lo - 1 + rng.zipf(a, n), hi).astype(int)


# --------------------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------------------
def _synthetic_params(num_train_ids: int, num_test_ids: int, num_cameras: int, seed: int,
                      image_size: tuple[int, int], zipf_a: float, max_images_per_id: int, junk_fraction: float,
                      distractor_fraction: float, jpeg_quality: int) -> dict[str, Any]:
    """The checked parameters, as the marker records them."""
    if num_cameras < 2:
        raise ValueError(f"num_cameras: expected >= 2 (test identities need a cross-camera gallery image), "
                         f"got {num_cameras}")
    if num_cameras > 9:
        raise ValueError(f"num_cameras: expected <= 9 (Market-1501 filenames hold a 1-digit camera id), "
                         f"got {num_cameras}")
    for name, value in (("num_train_ids", num_train_ids), ("num_test_ids", num_test_ids)):
        if value < 1:
            raise ValueError(f"{name}: expected >= 1, got {value}")
    if num_train_ids + num_test_ids > 9998:
        raise ValueError(f"num_train_ids + num_test_ids: expected <= 9998 (the 4-digit Market-1501 pid), "
                         f"got {num_train_ids + num_test_ids}")
    H, W = int(image_size[0]), int(image_size[1])
    if H < 16 or W < 8:
        raise ValueError(f"image_size: expected (height, width) of at least (16, 8), got {tuple(image_size)}")
    return {
        "version": SYNTHETIC_VERSION,
        "num_train_ids": int(num_train_ids),
        "num_test_ids": int(num_test_ids),
        "num_cameras": int(num_cameras),
        "seed": int(seed),
        "image_size": [H, W],
        "zipf_a": float(zipf_a),
        "max_images_per_id": int(max_images_per_id),
        "junk_fraction": float(junk_fraction),
        "distractor_fraction": float(distractor_fraction),
        "jpeg_quality": int(jpeg_quality),
    }


def _reuse_or_clear(root: Path, params: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The stats of the complete dataset with these params already in `root`, else None after removing the
    files of an earlier one (its marker lists them). Never touches a folder that is not ours."""
    marker = root / MARKER_NAME
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a directory")
    if not (root.is_dir() and any(root.iterdir())):
        return None
    if not marker.is_file():
        raise FileExistsError(
            f"refusing to write a synthetic dataset into non-empty folder {root}: it has no {MARKER_NAME} "
            "marker, so it is not a dataset made by make_synthetic_reid (choose an empty or new folder)"
        )
    try:
        old = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise FileExistsError(f"{marker} is unreadable ({exc}); refusing to touch {root}") from exc
    files_ok = old.get("complete") and all((root / f).is_file() for f in old.get("files", []))
    if old.get("params") == params and files_ok:
        return dict(old["stats"])
    if old.get("params") != params and not overwrite:
        raise FileExistsError(
            f"{root} holds a synthetic dataset made with other parameters ({old.get('params')}); "
            "pass overwrite=True to regenerate it"
        )
    for f in old.get("files", []):  # ours: remove only the files the marker lists
        p = root / f
        if p.is_file():
            p.unlink()
    marker.unlink()
    return None


class _ImageWriter:
    """Renders and saves the dataset's images with Market-1501 names, drawing from one generator in order."""

    def __init__(self, root: Path, rng: np.random.Generator, num_cameras: int, size: tuple[int, int],
                 jpeg_quality: int):
        self.root, self.rng, self.num_cameras, self.size, self.jpeg_quality = root, rng, num_cameras, size, jpeg_quality
        self.cameras = [_random_camera(rng) for _ in range(num_cameras)]
        yy, xx = np.mgrid[0:size[0], 0:size[1]].astype(np.float32)
        self.grid = (yy, xx)
        self.frame = np.zeros(num_cameras, dtype=np.int64)
        self.files: list[str] = []
        self._seen: set[str] = set()

    def emit(self, split: str, pid: int, cam: int, ident: dict | None, junk: bool = False) -> None:
        self.frame[cam] += int(self.rng.integers(1, 200))
        det = int(self.rng.integers(1, 9))
        pid_str = "-1" if pid < 0 else f"{pid:04d}"
        name = f"{pid_str}_c{cam + 1}s1_{int(self.frame[cam]):06d}_{det:02d}.jpg"
        assert name not in self._seen
        self._seen.add(name)
        rel = f"{split}/{name}"
        _render(ident, self.cameras[cam], self.rng, self.size, self.grid, self.jpeg_quality, self.root / rel, junk=junk)
        self.files.append(rel)


def _write_train(writer: _ImageWriter, train_pids: np.ndarray, idents: dict[int, dict], zipf_a: float,
                 max_images_per_id: int) -> np.ndarray:
    """Long-tailed images per identity, spread over at least two cameras when possible; -> counts."""
    rng, num_cameras = writer.rng, writer.num_cameras
    train_counts = _zipf_counts(rng, len(train_pids), zipf_a, 2, max_images_per_id)
    for pid, n in zip(train_pids, train_counts):
        home = rng.choice(num_cameras, size=min(num_cameras, int(rng.integers(2, num_cameras + 1))), replace=False)
        for i in range(int(n)):
            cam = int(home[i % len(home)]) if i < len(home) else int(rng.choice(home))
            writer.emit("bounding_box_train", int(pid), cam, idents[int(pid)])
    return train_counts


def _write_test(writer: _ImageWriter, test_pids: np.ndarray, idents: dict[int, dict], zipf_a: float,
                max_images_per_id: int) -> tuple[np.ndarray, int]:
    """One query per identity, gallery images in other cameras (sometimes one in the query's);
    -> (other-camera gallery counts, number of same-camera gallery images)."""
    rng, num_cameras = writer.rng, writer.num_cameras
    gal_counts = _zipf_counts(rng, len(test_pids), zipf_a, 1, max_images_per_id)
    same_cam = 0
    for pid, n in zip(test_pids, gal_counts):
        qcam = int(rng.integers(num_cameras))
        writer.emit("query", int(pid), qcam, idents[int(pid)])
        others = [c for c in range(num_cameras) if c != qcam]
        for i in range(int(n)):
            cam = others[int(rng.integers(len(others)))]
            writer.emit("bounding_box_test", int(pid), cam, idents[int(pid)])
        if rng.random() < 0.3:
            writer.emit("bounding_box_test", int(pid), qcam, idents[int(pid)])
            same_cam += 1
    return gal_counts, same_cam


def _write_junk_and_distractors(writer: _ImageWriter, num_junk: int, num_distractors: int) -> None:
    rng = writer.rng
    for _ in range(num_junk):  # fragments or pure background
        cam = int(rng.integers(writer.num_cameras))
        ident = _random_identity(rng) if rng.random() < 0.5 else None
        writer.emit("bounding_box_test", -1, cam, ident, junk=True)
    for _ in range(num_distractors):  # people not among the identities
        cam = int(rng.integers(writer.num_cameras))
        writer.emit("bounding_box_test", 0, cam, _random_identity(rng))


def make_synthetic_reid(
    root: str | os.PathLike,
    num_train_ids: int = 100,
    num_test_ids: int = 100,
    num_cameras: int = 6,
    seed: int = 0,
    image_size: tuple[int, int] = (128, 64),
    *,
    zipf_a: float = 1.8,
    max_images_per_id: int = 30,
    junk_fraction: float = 0.05,
    distractor_fraction: float = 0.05,
    jpeg_quality: int = 90,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a synthetic Market-1501-layout dataset under ``root`` and return its statistics.

    ``image_size`` is (height, width). Train images per identity are ``Zipf(zipf_a)`` capped at
    ``max_images_per_id`` (at least 2); each test identity gets one query in a random camera and a
    long-tailed number of gallery images, at least one in another camera and sometimes some in the query
    camera (which the protocol drops). ``junk_fraction``/``distractor_fraction`` are relative to the
    gallery size (at least one each). Returns a dict with counts, ``reused`` and ``elapsed_s``.

    Raises ``FileExistsError`` if ``root`` is non-empty and not a synthetic dataset written by this function,
    or if it holds one made with different parameters and ``overwrite`` is false.
    """
    params = _synthetic_params(num_train_ids, num_test_ids, num_cameras, seed, image_size, zipf_a,
                               max_images_per_id, junk_fraction, distractor_fraction, jpeg_quality)
    root = Path(root)
    marker = root / MARKER_NAME
    start = time.perf_counter()
    reused = _reuse_or_clear(root, params, overwrite)
    if reused is not None:
        return dict(reused, root=str(root), reused=True, elapsed_s=time.perf_counter() - start)

    root.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        (root / split).mkdir(exist_ok=True)
    marker.write_text(json.dumps({"params": params, "complete": False, "files": []}))

    rng = np.random.default_rng(seed)
    writer = _ImageWriter(root, rng, num_cameras, tuple(params["image_size"]), jpeg_quality)
    pids = rng.choice(np.arange(1, 10000), num_train_ids + num_test_ids, replace=False)
    train_pids = np.sort(pids[:num_train_ids])
    test_pids = np.sort(pids[num_train_ids:])
    idents = {int(p): _random_identity(rng) for p in np.sort(pids)}
    train_counts = _write_train(writer, train_pids, idents, zipf_a, max_images_per_id)
    gal_counts, same_cam = _write_test(writer, test_pids, idents, zipf_a, max_images_per_id)
    n_gallery_ids = int(gal_counts.sum()) + same_cam
    n_junk = max(1, int(round(junk_fraction * n_gallery_ids)))
    n_distract = max(1, int(round(distractor_fraction * n_gallery_ids)))
    _write_junk_and_distractors(writer, n_junk, n_distract)

    stats = {
        "root": str(root),
        "num_train_ids": int(num_train_ids),
        "num_test_ids": int(num_test_ids),
        "num_cameras": int(num_cameras),
        "num_train_images": int(train_counts.sum()),
        "num_query_images": int(num_test_ids),
        "num_gallery_images": n_gallery_ids + n_junk + n_distract,
        "num_same_camera_gallery": int(same_cam),
        "num_junk": int(n_junk),
        "num_distractors": int(n_distract),
        "train_images_per_id": {f"{int(p):04d}": int(n) for p, n in zip(train_pids, train_counts)},
        "image_size": params["image_size"],
        "seed": int(seed),
    }
    marker.write_text(json.dumps({"params": params, "complete": True, "files": writer.files, "stats": stats},
                                 indent=0))
    return dict(stats, reused=False, elapsed_s=time.perf_counter() - start)


# --------------------------------------------------------------------------------------------------------
# embedding-level synthetic data (no images): for examples and tests of the ranking ops
# --------------------------------------------------------------------------------------------------------
@dataclass
class EmbeddingSplit:
    features: np.ndarray  # (num_images, dim) float32
    pids: np.ndarray  # (num_images,) int64, 0 = distractor
    camids: np.ndarray  # (num_images,) int64


def synthetic_embeddings(
    num_ids: int = 300, num_cameras: int = 6, dim: int = 128, num_distractors: int = 500, seed: int = 0,
    camera_shift: float = 0.6, noise: float = 0.8,
) -> tuple[EmbeddingSplit, EmbeddingSplit]:
    """(query, gallery) embeddings with identity clusters, camera offsets and long-tailed image counts."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_ids, dim)) / np.sqrt(dim)
    camera_offsets = camera_shift * rng.standard_normal((num_cameras, dim)) / np.sqrt(dim)
    images_per_id = np.minimum(5 + rng.zipf(1.6, num_ids), 40)  # long-tailed
    query, gallery = [], []
    for pid, count in enumerate(images_per_id, start=1):
        cameras = rng.integers(0, num_cameras, count)
        features = centres[pid - 1] + camera_offsets[cameras] + noise * rng.standard_normal((count, dim)) / np.sqrt(dim)
        query.append((features[:1], pid, cameras[:1]))
        gallery.append((features[1:], pid, cameras[1:]))
    distractor_cameras = rng.integers(0, num_cameras, num_distractors)
    distractors = rng.standard_normal((num_distractors, dim)) / np.sqrt(dim) + camera_offsets[distractor_cameras]
    gallery.append((distractors, 0, distractor_cameras))

    def stack(parts) -> EmbeddingSplit:
        features = np.concatenate([f for f, _, _ in parts]).astype(np.float32)
        pids = np.concatenate([np.full(len(f), pid, dtype=np.int64) for f, pid, _ in parts])
        camids = np.concatenate([c for _, _, c in parts]).astype(np.int64)
        return EmbeddingSplit(features, pids, camids)

    return stack(query), stack(gallery)
