"""Dataset loaders on tiny generated folders of each layout, ImageDataset decoding, and the transforms."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from reidfast.data import (
    Compose,
    ImageDataset,
    ImageRecord,
    Normalize,
    Pad,
    RandomCrop,
    RandomErasing,
    RandomHorizontalFlip,
    Resize,
    ToTensor,
    UnreadableImageError,
    build_transforms,
    load_cuhk03_np,
    load_dukemtmc,
    load_folder,
    load_market1501,
    load_msmt17,
)


def write_jpeg(path: Path, colour=(120, 30, 200), size=(8, 16)) -> None:
    """A tiny (width, height) RGB JPEG with a left/right gradient so flips change pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    for x in range(size[0]):
        for y in range(size[1]):
            image.putpixel((x, y), (x * 30 % 256, y * 15 % 256, colour[2]))
    image.save(path, "JPEG")


MARKET_FILES = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s1_000101_01.jpg",
                           "0011_c6s2_000001_02.jpg", "-1_c1s1_000001_00.jpg"],
    "query": ["0003_c1s1_000001_00.jpg", "0005_c2s1_000002_00.jpg", "-1_c2s1_000003_00.jpg"],
    "bounding_box_test": ["0003_c4s1_000010_01.jpg", "0005_c5s1_000020_01.jpg", "0000_c1s1_000030_01.jpg",
                          "0000_c3s1_000040_01.jpg", "-1_c1s1_000050_01.jpg"],
}
DUKE_FILES = {
    "bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c5_f0051341.jpg", "0009_c8_f0000001.jpg"],
    "query": ["0005_c2_f0046182.jpg"],
    "bounding_box_test": ["0005_c1_f0000001.jpg", "0000_c3_f0000002.jpg", "-1_c4_f0000003.jpg"],
}


def make_market_layout(root: Path, files: dict[str, list[str]]) -> Path:
    for folder, names in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            write_jpeg(root / folder / name)
    return root


# --------------------------------------------------------------------------------------------- Market / Duke
def test_market1501_semantics(tmp_path):
    dataset = load_market1501(make_market_layout(tmp_path, MARKET_FILES))
    assert sorted({r.pid for r in dataset.train}) == [0, 1, 2]  # raw 2, 7, 11 relabelled
    by_name = {Path(r.path).name: r for r in dataset.train}
    assert by_name["0002_c1s1_000451_03.jpg"].pid == by_name["0002_c2s1_000551_01.jpg"].pid == 0
    assert by_name["0011_c6s2_000001_02.jpg"] == ImageRecord(
        str(tmp_path / "bounding_box_train" / "0011_c6s2_000001_02.jpg"), 2, 5)
    assert all(r.pid != -1 for split in (dataset.train, dataset.query, dataset.gallery) for r in split)
    assert sorted(r.pid for r in dataset.query) == [3, 5]  # raw pids kept, junk dropped
    assert sorted(r.pid for r in dataset.gallery) == [0, 0, 3, 5]  # distractors kept in the gallery
    assert {r.camid for r in dataset.gallery} == {0, 2, 3, 4}  # c1..c6 -> 0..5
    assert dataset.num_train_pids == 3 and dataset.num_train_images == 4 and dataset.num_train_cams == 4
    assert dataset.num_query_images == 2 and dataset.num_gallery_pids == 3 and dataset.num_cams == 6
    assert dataset.stats()["gallery"] == {"pids": 3, "images": 4, "cams": 4}
    assert "market1501" in dataset.summary()


def test_market_distractors_dropped_from_train_and_query(tmp_path):
    files = {k: list(v) for k, v in MARKET_FILES.items()}
    files["bounding_box_train"].append("0000_c1s1_000001_01.jpg")
    files["query"].append("0000_c1s1_000002_01.jpg")
    dataset = load_market1501(make_market_layout(tmp_path, files))
    assert dataset.num_train_pids == 3 and dataset.num_train_images == 4
    assert all(r.pid != 0 for r in dataset.query)


def test_dukemtmc_names(tmp_path):
    dataset = load_dukemtmc(make_market_layout(tmp_path, DUKE_FILES))
    assert [(r.pid, r.camid) for r in dataset.train] == [(0, 1), (0, 4), (1, 7)]
    assert [(r.pid, r.camid) for r in dataset.query] == [(5, 1)]
    assert sorted((r.pid, r.camid) for r in dataset.gallery) == [(0, 2), (5, 0)]


@pytest.mark.parametrize("bad_name", ["abc_c1s1_000001_00.jpg", "0001_1s1_000001_00.jpg", "0001_c0s1_01.jpg",
                                      "0001.jpg"])
def test_malformed_filename_names_file_and_pattern(tmp_path, bad_name):
    files = {k: list(v) for k, v in MARKET_FILES.items()}
    files["query"].append(bad_name)
    make_market_layout(tmp_path, files)
    with pytest.raises(ValueError, match=bad_name.replace(".", r"\.")) as info:
        load_market1501(tmp_path)
    assert "expected" in str(info.value) and "_c<cam>" in str(info.value)


def test_non_image_files_are_ignored(tmp_path):
    make_market_layout(tmp_path, MARKET_FILES)
    (tmp_path / "query" / "Thumbs.db").write_bytes(b"junk")
    assert load_market1501(tmp_path).num_query_images == 2


def test_missing_folder_names_it(tmp_path):
    files = {k: v for k, v in MARKET_FILES.items() if k != "query"}
    make_market_layout(tmp_path, files)
    with pytest.raises(ValueError, match=r"missing folder .*query"):
        load_market1501(tmp_path)
    with pytest.raises(ValueError, match="missing folder"):
        load_market1501(tmp_path / "nope")


def test_empty_split_raises(tmp_path):
    files = {k: list(v) for k, v in MARKET_FILES.items()}
    files["query"] = ["-1_c2s1_000003_00.jpg"]  # only junk -> empty after filtering
    make_market_layout(tmp_path, files)
    with pytest.raises(ValueError, match=r"empty query split .*query"):
        load_market1501(tmp_path)


# --------------------------------------------------------------------------------------------- CUHK03-NP
def test_cuhk03_np_labeled_and_detected(tmp_path):
    make_market_layout(tmp_path / "labeled", {
        "bounding_box_train": ["0001_c1_1.png", "0001_c2_2.png", "0004_c1_1.png"],
        "query": ["0010_c1_1.png"], "bounding_box_test": ["0010_c2_1.png", "0011_c2_1.png"]})
    make_market_layout(tmp_path / "detected", {
        "bounding_box_train": ["0001_c1_1.png"], "query": ["0010_c1_1.png"], "bounding_box_test": ["0010_c2_1.png"]})
    labeled = load_cuhk03_np(tmp_path, labeled=True)
    detected = load_cuhk03_np(tmp_path, labeled=False)
    assert labeled.num_train_images == 3 and labeled.num_train_pids == 2 and detected.num_train_images == 1
    assert "labeled" in labeled.train[0].path and "detected" in detected.train[0].path
    assert [(r.pid, r.camid) for r in labeled.gallery] == [(10, 1), (11, 1)]
    with pytest.raises(ValueError, match="missing folder"):
        load_cuhk03_np(tmp_path / "labeled")


# --------------------------------------------------------------------------------------------- MSMT17
def make_msmt17(root: Path, version_folder="MSMT17_V1", train_sub="train", test_sub="test") -> Path:
    base = root / version_folder
    lists = {
        "list_train.txt": (train_sub, [("0000/0000_000_01_0303morning_0015_0.jpg", 0),
                                       ("0000/0000_001_05_0303morning_0016_0.jpg", 0),
                                       ("0003/0003_000_15_0303noon_0001_1.jpg", 3)]),
        "list_val.txt": (train_sub, [("0004/0004_000_02_0303noon_0002_0.jpg", 4)]),
        "list_query.txt": (test_sub, [("0000/0000_000_02_0113morning_0001_0.jpg", 0)]),
        "list_gallery.txt": (test_sub, [("0000/0000_001_03_0113morning_0002_0.jpg", 0),
                                        ("0001/0001_000_07_0113noon_0003_0.jpg", 1)]),
    }
    for list_name, (sub, entries) in lists.items():
        for rel, _ in entries:
            write_jpeg(base / sub / rel)
        (base / list_name).write_text("".join(f"{rel} {pid}\n" for rel, pid in entries))
    return root


def test_msmt17_v1_lists(tmp_path):
    dataset = load_msmt17(make_msmt17(tmp_path))
    assert [(r.pid, r.camid) for r in dataset.train] == [(0, 0), (0, 4), (1, 14)]
    assert dataset.train[0].path == str(tmp_path / "MSMT17_V1" / "train" / "0000/0000_000_01_0303morning_0015_0.jpg")
    assert [(r.pid, r.camid) for r in dataset.query] == [(0, 1)]
    assert [(r.pid, r.camid) for r in dataset.gallery] == [(0, 2), (1, 6)]
    assert load_msmt17(tmp_path, combine_val=True).num_train_pids == 3
    assert load_msmt17(tmp_path / "MSMT17_V1", version="V1").num_train_images == 3


def test_msmt17_v2_auto_and_version_mismatch(tmp_path):
    make_msmt17(tmp_path, "MSMT17_V2", "mask_train_v2", "mask_test_v2")
    dataset = load_msmt17(tmp_path)
    assert "mask_train_v2" in dataset.train[0].path and "mask_test_v2" in dataset.query[0].path
    with pytest.raises(ValueError, match="no MSMT17 layout"):
        load_msmt17(tmp_path, version="V1")
    with pytest.raises(ValueError, match="version"):
        load_msmt17(tmp_path, version="V3")


def test_msmt17_malformed_line_names_file_and_line(tmp_path):
    make_msmt17(tmp_path)
    (tmp_path / "MSMT17_V1" / "list_query.txt").write_text("0000/0000_000_01_a_b_0.jpg 0\nbroken-line\n")
    with pytest.raises(ValueError, match=r"line 2 in .*list_query\.txt.*expected"):
        load_msmt17(tmp_path)


def test_msmt17_missing_list_file(tmp_path):
    make_msmt17(tmp_path)
    (tmp_path / "MSMT17_V1" / "list_gallery.txt").unlink()
    with pytest.raises(ValueError, match=r"missing MSMT17 list file .*list_gallery\.txt"):
        load_msmt17(tmp_path)


# --------------------------------------------------------------------------------------------- generic folder
def test_folder_layout_with_camera_parser(tmp_path):
    for pid, names in {"0042": ["a_c1.jpg", "b_c2.jpg"], "0007": ["c_c3.jpg"], "empty": []}.items():
        (tmp_path / pid).mkdir()
        for name in names:
            write_jpeg(tmp_path / pid / name)
    dataset = load_folder(tmp_path, camera_parser=lambda name: int(name.split("_c")[1][0]) - 1)
    assert sorted((Path(r.path).name, r.pid, r.camid) for r in dataset.train) == [
        ("a_c1.jpg", 1, 0), ("b_c2.jpg", 1, 1), ("c_c3.jpg", 0, 2)]
    assert dataset.query == [] and dataset.gallery == []
    assert {r.camid for r in load_folder(tmp_path).train} == {0}


def test_folder_layout_with_splits_keeps_raw_query_pids(tmp_path):
    write_jpeg(tmp_path / "train" / "alice" / "1.jpg")
    write_jpeg(tmp_path / "train" / "bob" / "1.jpg")
    write_jpeg(tmp_path / "query" / "0005" / "1.jpg")
    write_jpeg(tmp_path / "gallery" / "0005" / "2.jpg")
    dataset = load_folder(tmp_path)
    assert sorted(r.pid for r in dataset.train) == [0, 1]
    assert [r.pid for r in dataset.query] == [5] and [r.pid for r in dataset.gallery] == [5]


def test_folder_layout_errors(tmp_path):
    with pytest.raises(ValueError, match="missing folder"):
        load_folder(tmp_path / "nope")
    (tmp_path / "0001").mkdir()
    with pytest.raises(ValueError, match="empty train split"):
        load_folder(tmp_path)
    write_jpeg(tmp_path / "0001" / "x.jpg")
    with pytest.raises(ValueError, match=r"camera_parser returned -1 for .*x\.jpg"):
        load_folder(tmp_path, camera_parser=lambda name: -1)


# --------------------------------------------------------------------------------------------- ImageDataset
def test_image_dataset_items_and_dataloader(tmp_path):
    dataset = load_market1501(make_market_layout(tmp_path, MARKET_FILES))
    images = ImageDataset(dataset.train)
    image, pid, camid, index = images[2]
    assert image.shape == (3, 16, 8) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0
    assert (pid, camid, index) == (dataset.train[2].pid, dataset.train[2].camid, 2)
    loader = torch.utils.data.DataLoader(ImageDataset(dataset.train, build_transforms(32, 16, train=False)),
                                         batch_size=4)
    batch_images, batch_pids, batch_camids, batch_index = next(iter(loader))
    assert batch_images.shape == (4, 3, 32, 16) and batch_index.tolist() == [0, 1, 2, 3]


def test_unreadable_image_names_file(tmp_path):
    bad = tmp_path / "0001_c1s1_000001_00.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(UnreadableImageError, match="0001_c1s1_000001_00.jpg"):
        ImageDataset([ImageRecord(str(bad), 0, 0)])[0]
    with pytest.raises(OSError, match="missing.jpg"):
        ImageDataset([ImageRecord(str(tmp_path / "missing.jpg"), 0, 0)])[0]


# --------------------------------------------------------------------------------------------- transforms
def gradient_image(height=16, width=8) -> torch.Tensor:
    """(3, H, W) image whose columns all differ, so flips/crops/erasing are visible."""
    columns = torch.linspace(0.0, 1.0, width).expand(height, width)
    return torch.stack([columns, columns.flip(-1), torch.full((height, width), 0.5)])


def test_to_tensor_matches_pixels():
    pil = Image.new("RGB", (3, 2), (255, 0, 51))
    tensor = ToTensor()(pil)
    assert tensor.shape == (3, 2, 3)
    assert torch.allclose(tensor[:, 0, 0], torch.tensor([1.0, 0.0, 0.2]))


def test_resize_shapes_and_constant_preserved():
    assert Resize((32, 12))(gradient_image()).shape == (3, 32, 12)
    constant = torch.full((3, 20, 10), 0.3)
    assert torch.allclose(Resize((7, 5))(constant), torch.full((3, 7, 5), 0.3), atol=1e-6)
    with pytest.raises(ValueError, match="Resize size"):
        Resize((0, 4))


def test_flip_changes_pixels_and_is_exact():
    image = gradient_image()
    assert torch.equal(RandomHorizontalFlip(p=1.0)(image), image.flip(-1))
    assert not torch.equal(RandomHorizontalFlip(p=1.0)(image), image)
    assert torch.equal(RandomHorizontalFlip(p=0.0)(image), image)


def test_pad_and_random_crop():
    image = gradient_image()
    padded = Pad(2)(image)
    assert padded.shape == (3, 20, 12) and padded[:, :2].abs().sum() == 0
    crops = {tuple(RandomCrop((16, 8), torch.Generator().manual_seed(s))(padded).flatten()[:40].tolist())
             for s in range(20)}
    assert len(crops) > 1  # different offsets across seeds
    numbered = torch.arange(20 * 12, dtype=torch.float32).reshape(1, 20, 12)  # pixel value = row * 12 + column
    offsets = set()
    for seed in range(30):
        corner = int(RandomCrop((16, 8), torch.Generator().manual_seed(seed))(numbered)[0, 0, 0])
        offsets.add(divmod(corner, 12))
    assert all(0 <= top <= 4 and 0 <= left <= 4 for top, left in offsets)
    assert len({top for top, _ in offsets}) > 1 and len({left for _, left in offsets}) > 1
    assert torch.equal(RandomCrop((20, 12))(padded), padded)
    with pytest.raises(ValueError, match="larger than the image"):
        RandomCrop((30, 8))(image)


def test_random_erasing_changes_a_rectangle():
    image = gradient_image(64, 32)
    erased = RandomErasing(p=1.0, value=-7.0, generator=torch.Generator().manual_seed(0))(image)
    changed = (erased != image).any(0)
    assert changed.any() and bool((erased[:, changed] == -7.0).all())
    rows, cols = changed.nonzero(as_tuple=True)
    area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert area == changed.sum()  # one filled rectangle
    assert 0.02 * 64 * 32 * 0.5 <= area <= 0.4 * 64 * 32 * 1.5
    assert torch.equal(RandomErasing(p=0.0)(image), image)
    per_channel = RandomErasing(p=1.0, value=(1.0, 2.0, 3.0), generator=torch.Generator().manual_seed(1))(image)
    assert set(per_channel[1][(per_channel != image).any(0)].tolist()) == {2.0}


def test_normalize_values():
    image = torch.full((3, 4, 4), 0.5)
    out = Normalize(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))(image)
    assert torch.allclose(out[:, 0, 0], torch.tensor([0.0, 1.0, 0.25]))
    with pytest.raises(ValueError, match="std: expected positive"):
        Normalize(std=(0.0, 1.0, 1.0))


def test_build_transforms_shapes_and_determinism(tmp_path):
    write_jpeg(tmp_path / "x.jpg", size=(20, 50))
    pil = Image.open(tmp_path / "x.jpg")
    for train in (True, False):
        assert build_transforms(64, 32, train=train)(pil).shape == (3, 64, 32)

    def run(seed):
        return build_transforms(64, 32, train=True, erasing_p=1.0, generator=torch.Generator().manual_seed(seed))(pil)

    assert torch.equal(run(3), run(3))
    assert any(not torch.equal(run(3), run(seed)) for seed in range(4, 8))
    test_pipeline = build_transforms(64, 32, train=False)
    assert torch.equal(test_pipeline(pil), test_pipeline(pil))


def test_compose_applies_in_order():
    pipeline = Compose([lambda x: x + 1, lambda x: x * 2])
    assert pipeline(torch.tensor(1.0)) == 4.0
