"""Exploratory data analysis of a re-ID dataset: counts, imbalance, cameras, image sizes, a report.

    stats = dataset_statistics(train, query, gallery)          # records with .path .pid .camid
    write_eda_report(stats, "eda_out", {"train": train, "query": query, "gallery": gallery})

Records are any objects with ``path``, ``pid`` and ``camid`` attributes. ``pid < 0`` is junk (counted, never
an identity). In query/gallery ``pid == 0`` is the Market-1501 distractor label (counted, not an identity);
in train every ``pid >= 0`` is an identity (loaders relabel train pids from 0).
"""
from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ._optional import require

__all__ = ["dataset_statistics", "split_statistics", "gini", "write_eda_report"]

REPORT_FILES = ("report.md", "images_per_identity.png", "identities_per_camera.png", "image_sizes.png")


def gini(counts: Iterable[float]) -> float:
    """Gini coefficient of non-negative counts: 0 = perfectly balanced, -> 1 = all in one class."""
    x = np.sort(np.asarray(list(counts), dtype=np.float64))
    n = x.size
    if n == 0 or x.sum() == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(2.0 * np.sum(i * x) / (n * x.sum()) - (n + 1) / n)


def _image_sizes(records: Sequence[Any], sample: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    Image = require("PIL.Image", "reading image sizes")

    if not records or sample <= 0:
        return []
    idx = np.arange(len(records))
    if len(records) > sample:
        idx = np.sort(rng.choice(len(records), sample, replace=False))
    sizes = []
    for i in idx:
        path = records[int(i)].path
        try:
            with Image.open(path) as im:  # reads the header only
                sizes.append((int(im.width), int(im.height)))
        except OSError as exc:
            raise OSError(f"cannot read image {path}: {exc}") from exc
    return sizes


def split_statistics(records: Sequence[Any], distractor_pid: int | None = None, sample_sizes: int = 200, seed: int = 0) -> dict[str, Any]:
    """Statistics of one split (see the module docstring for junk/distractor handling)."""
    records = list(records)
    pids = np.asarray([int(r.pid) for r in records], dtype=np.int64)
    cams = np.asarray([int(r.camid) for r in records], dtype=np.int64)
    junk = pids < 0
    distract = (pids == distractor_pid) if distractor_pid is not None else np.zeros_like(junk)
    ident = ~junk & ~distract
    per_id = Counter(pids[ident].tolist())
    counts = np.asarray(sorted(per_id.values()), dtype=np.int64)
    ids_per_cam: dict[int, set] = defaultdict(set)
    imgs_per_cam: Counter = Counter(cams.tolist())
    for p, c in zip(pids[ident].tolist(), cams[ident].tolist()):
        ids_per_cam[c].add(p)
    cams_per_id: dict[int, set] = defaultdict(set)
    for p, c in zip(pids[ident].tolist(), cams[ident].tolist()):
        cams_per_id[p].add(c)
    sizes = _image_sizes(records, sample_sizes, np.random.default_rng(seed))
    wh = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)

    def _desc(a: np.ndarray) -> dict[str, float]:
        if a.size == 0:
            return {"min": 0.0, "max": 0.0, "mean": 0.0, "median": 0.0, "std": 0.0}
        return {"min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()), "median": float(np.median(a)), "std": float(a.std())}

    return {
        "num_images": int(len(records)),
        "num_identities": int(len(per_id)),
        "num_cameras": int(len(imgs_per_cam)),
        "cameras": sorted(int(c) for c in imgs_per_cam),
        "num_junk": int(junk.sum()),
        "num_distractors": int(distract.sum()),
        "images_per_identity": {int(k): int(v) for k, v in sorted(per_id.items())},
        "images_per_identity_summary": _desc(counts.astype(np.float64)),
        "imbalance_ratio": float(counts.max() / counts.min()) if counts.size else 0.0,
        "gini": gini(counts),
        "identities_per_camera": {int(c): len(ids_per_cam.get(c, ())) for c in sorted(imgs_per_cam)},
        "images_per_camera": {int(c): int(n) for c, n in sorted(imgs_per_cam.items())},
        "cameras_per_identity_summary": _desc(np.asarray([len(v) for v in cams_per_id.values()], dtype=np.float64)),
        "image_size_sample": [list(s) for s in sizes],
        "image_width": _desc(wh[:, 0]),
        "image_height": _desc(wh[:, 1]),
    }


def dataset_statistics(train: Sequence[Any], query: Sequence[Any], gallery: Sequence[Any], sample_sizes: int = 200, seed: int = 0) -> dict[str, Any]:
    """Per-split statistics plus cross-split checks (test identities overlap, train/test overlap).

    ``sample_sizes`` images per split are opened (header only) for the size statistics.
    """
    out: dict[str, Any] = {
        "train": split_statistics(train, None, sample_sizes, seed),
        "query": split_statistics(query, 0, sample_sizes, seed),
        "gallery": split_statistics(gallery, 0, sample_sizes, seed),
    }
    q_ids = set(out["query"]["images_per_identity"])
    g_ids = set(out["gallery"]["images_per_identity"])
    t_ids = set(out["train"]["images_per_identity"])
    out["query_ids_missing_in_gallery"] = sorted(q_ids - g_ids)
    out["train_test_id_overlap"] = len(t_ids & (q_ids | g_ids))
    return out


# --------------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------------
def _plots(stats: Mapping[str, Any], out: Path, paths: dict[str, Path]) -> None:
    from .viz import _figure

    splits = [s for s in ("train", "query", "gallery") if s in stats]
    fig = _figure((4 * len(splits), 3.2))
    axes = fig.subplots(1, len(splits), squeeze=False)
    for ax, s in zip(axes[0], splits):
        counts = list(stats[s]["images_per_identity"].values())
        if counts:
            ax.hist(counts, bins=np.arange(1, max(counts) + 2) - 0.5, color="tab:blue")
        ax.set_title(f"{s}: images per identity")
        ax.set_xlabel("images")
        ax.set_ylabel("identities")
    fig.tight_layout()
    fig.savefig(paths["images_per_identity.png"])

    fig = _figure((6, 3.2))
    ax = fig.subplots()
    cams = sorted({c for s in splits for c in stats[s]["identities_per_camera"]})
    width = 0.8 / max(1, len(splits))
    for k, s in enumerate(splits):
        ipc = stats[s]["identities_per_camera"]
        ax.bar(np.arange(len(cams)) + k * width, [ipc.get(c, 0) for c in cams], width, label=s)
    ax.set_xticks(np.arange(len(cams)) + width * (len(splits) - 1) / 2, [str(c) for c in cams])
    ax.set_xlabel("camera")
    ax.set_ylabel("identities")
    ax.set_title("identities per camera")
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths["identities_per_camera.png"])

    fig = _figure((4.5, 4))
    ax = fig.subplots()
    rng = np.random.default_rng(0)
    for s in splits:
        wh = np.asarray(stats[s]["image_size_sample"], dtype=np.float64).reshape(-1, 2)
        if wh.size:
            jitter = rng.uniform(-0.5, 0.5, wh.shape)  # identical sizes would hide each other
            ax.scatter(wh[:, 0] + jitter[:, 0], wh[:, 1] + jitter[:, 1], s=8, alpha=0.5, label=s)
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    ax.set_title("image sizes (sample)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths["image_sizes.png"])


def _examples(records_by_split: Mapping[str, Sequence[Any]], path: Path, per_split: int = 10) -> None:
    require("PIL", "drawing the sample-image grid")
    from PIL import Image, ImageDraw

    cw, ch, pad = 64, 128, 4
    rows = [(name, list(recs)[:per_split]) for name, recs in records_by_split.items() if len(recs)]
    canvas = Image.new("RGB", (90 + per_split * (cw + pad), max(1, len(rows)) * (ch + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (name, recs) in enumerate(rows):
        y = pad + r * (ch + pad)
        draw.text((4, y + ch // 2), name, fill="black")
        for c, rec in enumerate(recs):
            with Image.open(rec.path) as im:
                canvas.paste(im.convert("RGB").resize((cw, ch)), (90 + c * (cw + pad), y))
    canvas.save(path)


def write_eda_report(
    stats: Mapping[str, Any],
    out_dir: str | os.PathLike,
    records_by_split: Mapping[str, Sequence[Any]] | None = None,
    overwrite: bool = False,
    title: str = "Dataset report",
) -> dict[str, Path]:
    """Write ``report.md`` and PNG plots into ``out_dir``; return ``{file name: path}``.

    ``records_by_split`` (optional, e.g. ``{"train": train, ...}``) adds ``examples.png`` with sample images.
    Existing files are never replaced unless ``overwrite=True`` (``FileExistsError`` names them).
    """
    out = Path(out_dir)
    names = list(REPORT_FILES) + (["examples.png"] if records_by_split else [])
    paths = {n: out / n for n in names}
    clash = [str(p) for p in paths.values() if p.exists()]
    if clash and not overwrite:
        raise FileExistsError(f"refusing to overwrite existing report files (pass overwrite=True): {', '.join(clash)}")
    out.mkdir(parents=True, exist_ok=True)
    _plots(stats, out, paths)
    if records_by_split:
        _examples(records_by_split, paths["examples.png"])

    lines = [f"# {title}", "", "| split | images | identities | cameras | junk | distractors | img/id min | mean | max | imbalance (max/min) | Gini |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in ("train", "query", "gallery"):
        if s not in stats:
            continue
        d = stats[s]
        ipi = d["images_per_identity_summary"]
        lines.append(
            f"| {s} | {d['num_images']} | {d['num_identities']} | {d['num_cameras']} | {d['num_junk']} | {d['num_distractors']} "
            f"| {ipi['min']:.0f} | {ipi['mean']:.2f} | {ipi['max']:.0f} | {d['imbalance_ratio']:.2f} | {d['gini']:.3f} |"
        )
    lines += ["", "## Identities per camera", "", "| split | " + " | ".join(f"cam {c}" for c in sorted({c for s in ('train', 'query', 'gallery') if s in stats for c in stats[s]['identities_per_camera']})) + " |"]
    all_cams = sorted({c for s in ("train", "query", "gallery") if s in stats for c in stats[s]["identities_per_camera"]})
    lines.append("|---|" + "---|" * len(all_cams))
    for s in ("train", "query", "gallery"):
        if s in stats:
            ipc = stats[s]["identities_per_camera"]
            lines.append(f"| {s} | " + " | ".join(str(ipc.get(c, 0)) for c in all_cams) + " |")
    lines += ["", "## Image sizes (sampled)", "", "| split | sampled | width min/mean/max | height min/mean/max |", "|---|---|---|---|"]
    for s in ("train", "query", "gallery"):
        if s in stats:
            w, h = stats[s]["image_width"], stats[s]["image_height"]
            lines.append(f"| {s} | {len(stats[s]['image_size_sample'])} | {w['min']:.0f}/{w['mean']:.1f}/{w['max']:.0f} | {h['min']:.0f}/{h['mean']:.1f}/{h['max']:.0f} |")
    lines += [""]
    if "query_ids_missing_in_gallery" in stats:
        miss = stats["query_ids_missing_in_gallery"]
        lines.append(f"- Query identities without any gallery image: {len(miss)}" + (f" ({miss[:20]})" if miss else ""))
    if "train_test_id_overlap" in stats:
        lines.append(f"- Identities shared by train and test: {stats['train_test_id_overlap']}")
    lines += ["", "## Plots", ""]
    lines += [f"![{n}]({n})" for n in names if n.endswith(".png")]
    paths["report.md"].write_text("\n".join(lines) + "\n")
    return paths
