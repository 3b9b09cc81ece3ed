"""Re-ID dataset loaders: Market-1501, DukeMTMC-reID, MSMT17, CUHK03-NP and a generic folder layout.

Every loader returns a :class:`ReIDDataset` of :class:`ImageRecord` lists with Market-1501 semantics:

* pid -1 (junk) images are ignored everywhere;
* pid 0 (distractors) are kept in the gallery only;
* train pids are relabelled to 0..P-1, query/gallery keep their raw pids;
* camids are 0-based (``c1`` -> 0).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

import torch

from .._optional import require

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "ImageRecord",
    "ReIDDataset",
    "ImageDataset",
    "UnreadableImageError",
    "load_market1501",
    "load_dukemtmc",
    "load_msmt17",
    "load_cuhk03_np",
    "load_folder",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
JUNK_PID = -1
DISTRACTOR_PID = 0

# 0002_c1s1_000451_03.jpg (Market-1501), 0001_c2_f0046182.jpg (DukeMTMC-reID), 0001_c1_1.png (CUHK03-NP)
MARKET_NAME_PATTERN = re.compile(r"^(?P<pid>-1|\d+)_c(?P<cam>\d+)(?:s\d+)?_[^/\\]+$")
MARKET_NAME_EXPECTED = (
    "'<pid>_c<cam>[s<seq>]_<rest>.jpg' with pid -1 or digits and cam >= 1, e.g. 0002_c1s1_000451_03.jpg"
)


class ImageRecord(NamedTuple):
    """One image: its path, person id and 0-based camera id."""

    path: str
    pid: int
    camid: int


@dataclass
class ReIDDataset:
    """train/query/gallery record lists plus summary statistics."""

    name: str
    train: list[ImageRecord] = field(default_factory=list)
    query: list[ImageRecord] = field(default_factory=list)
    gallery: list[ImageRecord] = field(default_factory=list)

    @staticmethod
    def _num_pids(records: Sequence[ImageRecord]) -> int:
        return len({r.pid for r in records})

    @staticmethod
    def _num_cams(records: Sequence[ImageRecord]) -> int:
        return len({r.camid for r in records})

    @property
    def num_train_pids(self) -> int:
        return self._num_pids(self.train)

    @property
    def num_train_images(self) -> int:
        return len(self.train)

    @property
    def num_train_cams(self) -> int:
        return self._num_cams(self.train)

    @property
    def num_query_pids(self) -> int:
        return self._num_pids(self.query)

    @property
    def num_query_images(self) -> int:
        return len(self.query)

    @property
    def num_gallery_pids(self) -> int:
        return self._num_pids(self.gallery)

    @property
    def num_gallery_images(self) -> int:
        return len(self.gallery)

    @property
    def num_cams(self) -> int:
        return self._num_cams(self.train + self.query + self.gallery)

    def stats(self) -> dict[str, dict[str, int]]:
        """{'train'|'query'|'gallery': {'pids', 'images', 'cams'}}."""
        return {
            split: {"pids": self._num_pids(recs), "images": len(recs), "cams": self._num_cams(recs)}
            for split, recs in (("train", self.train), ("query", self.query), ("gallery", self.gallery))
        }

    def summary(self) -> str:
        lines = [f"{self.name}", "  split   | pids | images | cams"]
        for split, s in self.stats().items():
            lines.append(f"  {split:<7} | {s['pids']:>4} | {s['images']:>6} | {s['cams']:>4}")
        return "\n".join(lines)

    def __repr__(self) -> str:  # keep the repr short: the record lists can be huge
        return (
            f"ReIDDataset(name={self.name!r}, train={len(self.train)} images/{self.num_train_pids} pids, "
            f"query={len(self.query)}, gallery={len(self.gallery)})"
        )


# ----------------------------------------------------------------------------------------------- helpers
def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ValueError(f"missing folder {str(path)!r} ({what})")
    return path


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def parse_market_filename(path: Path | str) -> tuple[int, int]:
    """Return (raw pid, 0-based camid) of a Market-style filename; ValueError naming the file otherwise."""
    name = os.path.basename(str(path))
    match = MARKET_NAME_PATTERN.match(name)
    if match is None or int(match.group("cam")) < 1:
        raise ValueError(f"malformed image filename {str(path)!r}: expected {MARKET_NAME_EXPECTED}")
    return int(match.group("pid")), int(match.group("cam")) - 1


def _read_market_split(folder: Path, keep_distractors: bool) -> list[ImageRecord]:
    records = []
    for path in _image_files(folder):
        pid, camid = parse_market_filename(path)
        if pid == JUNK_PID or (pid == DISTRACTOR_PID and not keep_distractors):
            continue
        records.append(ImageRecord(str(path), pid, camid))
    return records


def _relabel(records: list[ImageRecord]) -> list[ImageRecord]:
    """Map the raw pids of `records` to 0..P-1 in sorted order of raw pid."""
    label_of = {pid: label for label, pid in enumerate(sorted({r.pid for r in records}))}
    return [ImageRecord(r.path, label_of[r.pid], r.camid) for r in records]


def _require_nonempty(records: list[ImageRecord], where: Path | str, split: str, expected: str) -> None:
    if not records:
        raise ValueError(f"empty {split} split in {str(where)!r}: expected {expected}")


def _load_market_layout(root: Path | str, name: str) -> ReIDDataset:
    root = Path(root)
    _require_dir(root, f"{name} root")
    splits = {}
    for split, sub, keep_distractors in (
        ("train", "bounding_box_train", False),
        ("query", "query", False),
        ("gallery", "bounding_box_test", True),
    ):
        folder = _require_dir(root / sub, f"{name} {split} split, expected <root>/{sub}/")
        records = _read_market_split(folder, keep_distractors)
        _require_nonempty(records, folder, split, f"images named {MARKET_NAME_EXPECTED}")
        splits[split] = records
    return ReIDDataset(name, _relabel(splits["train"]), splits["query"], splits["gallery"])


# ----------------------------------------------------------------------------------------------- loaders
def load_market1501(root: Path | str) -> ReIDDataset:
    """Market-1501: ``root/{bounding_box_train,query,bounding_box_test}/0002_c1s1_000451_03.jpg``."""
    return _load_market_layout(root, "market1501")


def load_dukemtmc(root: Path | str) -> ReIDDataset:
    """DukeMTMC-reID: same folders as Market-1501, names like ``0001_c2_f0046182.jpg``."""
    return _load_market_layout(root, "dukemtmc")


def load_cuhk03_np(root: Path | str, labeled: bool = True) -> ReIDDataset:
    """CUHK03-NP (new protocol): ``root/{labeled|detected}/{bounding_box_train,query,bounding_box_test}``."""
    sub = "labeled" if labeled else "detected"
    root = Path(root)
    _require_dir(root / sub, f"cuhk03-np {sub} boxes, expected <root>/{sub}/")
    dataset = _load_market_layout(root / sub, f"cuhk03_np_{sub}")
    return dataset


MSMT17_VERSIONS = {
    # version folder -> (train image folder, test image folder), as in torchreid
    "MSMT17_V1": ("train", "test"),
    "MSMT17_V2": ("mask_train_v2", "mask_test_v2"),
}
MSMT17_LINE_EXPECTED = (
    "'<pid folder>/<pid>_<index>_<cam>_<date>_<time>_<n>.jpg <pid>', "
    "e.g. '0000/0000_000_01_0303morning_0015_0.jpg 0'"
)


def _msmt17_dirs(root: Path, version: str) -> tuple[Path, Path, Path]:
    """Find (list folder, train image folder, test image folder) for `version` in V1/V2/auto."""
    if version not in ("auto", "V1", "V2", *MSMT17_VERSIONS):
        raise ValueError(f"version: expected 'auto', 'V1' or 'V2', got {version!r}")
    wanted = list(MSMT17_VERSIONS) if version == "auto" else ["MSMT17_" + version[-2:]]
    for folder_name in wanted:
        train_sub, test_sub = MSMT17_VERSIONS[folder_name]
        for base in (root / folder_name, root):
            if (base / "list_train.txt").is_file() and (base / train_sub).is_dir():
                return base, base / train_sub, base / test_sub
    layouts = " or ".join(f"<root>[/{v}]/{{{t},{s},list_train.txt}}" for v, (t, s) in MSMT17_VERSIONS.items()
                          if v in wanted)
    raise ValueError(f"no MSMT17 layout found in {str(root)!r}: expected {layouts}")


def _read_msmt17_list(list_path: Path, image_dir: Path) -> list[ImageRecord]:
    if not list_path.is_file():
        raise ValueError(f"missing MSMT17 list file {str(list_path)!r}")
    records = []
    for line_number, line in enumerate(list_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        fields = os.path.basename(parts[0]).split("_") if parts else []
        if len(parts) != 2 or len(fields) < 3 or not parts[1].lstrip("-").isdigit() or not fields[2].isdigit() \
                or int(fields[2]) < 1:
            raise ValueError(
                f"malformed line {line_number} in {str(list_path)!r}: {line!r}; expected {MSMT17_LINE_EXPECTED}"
            )
        pid, camid = int(parts[1]), int(fields[2]) - 1  # camera field is 1-based
        if pid == JUNK_PID:
            continue
        records.append(ImageRecord(str(image_dir / parts[0]), pid, camid))
    return records


def load_msmt17(root: Path | str, version: str = "auto", combine_val: bool = False) -> ReIDDataset:
    """MSMT17 V1 (``train``/``test``) or V2 (``mask_train_v2``/``mask_test_v2``) with ``list_*.txt`` files.

    Lines are ``<relative path> <pid>``; the camid is the third ``_`` field of the filename minus one (torchreid).
    ``list_val.txt`` is added to train only with ``combine_val=True`` (the usual protocol leaves it out).
    """
    root = Path(root)
    _require_dir(root, "msmt17 root")
    list_dir, train_dir, test_dir = _msmt17_dirs(root, version)
    train = _read_msmt17_list(list_dir / "list_train.txt", train_dir)
    if combine_val:
        train += _read_msmt17_list(list_dir / "list_val.txt", train_dir)
    query = _read_msmt17_list(list_dir / "list_query.txt", test_dir)
    gallery = _read_msmt17_list(list_dir / "list_gallery.txt", test_dir)
    for split, records, list_name in (("train", train, "list_train.txt"), ("query", query, "list_query.txt"),
                                      ("gallery", gallery, "list_gallery.txt")):
        _require_nonempty(records, list_dir / list_name, split, MSMT17_LINE_EXPECTED)
    return ReIDDataset(f"msmt17_{list_dir.name}", _relabel(train), query, gallery)


def load_folder(root: Path | str, camera_parser: Callable[[str], int] | None = None) -> ReIDDataset:
    """Generic ``root/<pid>/<image>`` layout (all train), or ``root/{train,query,gallery}/<pid>/<image>``.

    Numeric folder names are raw pids; other names get ids from their sorted order over all splits.
    ``camera_parser(filename) -> int`` gives the 0-based camid (default 0 for every image).
    """
    root = Path(root)
    _require_dir(root, "folder dataset root, expected <root>/<pid>/<image>")
    split_dirs = {s: root / s for s in ("train", "query", "gallery")}
    has_splits = split_dirs["train"].is_dir()
    if not has_splits:
        split_dirs = {"train": root}
    pid_folders = {s: sorted(p for p in d.iterdir() if p.is_dir()) for s, d in split_dirs.items() if d.is_dir()}
    names = sorted({p.name for folders in pid_folders.values() for p in folders})
    non_numeric = [n for n in names if not n.lstrip("-").isdigit()]
    named_id = {n: i for i, n in enumerate(non_numeric)}

    def raw_pid(name: str) -> int:
        return int(name) if name.lstrip("-").isdigit() else named_id[name]

    splits: dict[str, list[ImageRecord]] = {"train": [], "query": [], "gallery": []}
    for split, folders in pid_folders.items():
        for folder in folders:
            for path in _image_files(folder):
                camid = 0 if camera_parser is None else camera_parser(path.name)
                if not isinstance(camid, int) or camid < 0:
                    raise ValueError(f"camera_parser returned {camid!r} for {str(path)!r}; expected an int >= 0")
                splits[split].append(ImageRecord(str(path), raw_pid(folder.name), camid))
    _require_nonempty(splits["train"], split_dirs["train"], "train", "<root>/<pid>/<image>.jpg")
    return ReIDDataset("folder", _relabel(splits["train"]), splits["query"], splits["gallery"])


# ----------------------------------------------------------------------------------------------- decoding
class UnreadableImageError(OSError):
    """An image file that Pillow cannot open or decode."""


def read_image(path: str) -> Image.Image:
    """Open `path` as an RGB PIL image; UnreadableImageError naming the file otherwise."""
    pil = require("PIL.Image", "reading dataset images")
    try:
        with pil.open(path) as image:
            return image.convert("RGB")
    except (OSError, pil.UnidentifiedImageError, ValueError) as error:
        raise UnreadableImageError(f"cannot read image {path!r}: {error}") from error


class ImageDataset(torch.utils.data.Dataset):
    """records -> (image (3, H, W) float tensor, pid, camid, index); `transform` maps a PIL image to a tensor."""

    def __init__(self, records: Sequence[ImageRecord], transform: Callable | None = None):
        self.records = list(records)
        if transform is None:
            from .transforms import ToTensor

            transform = ToTensor()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        image = self.transform(read_image(record.path))
        return image, record.pid, record.camid, index
