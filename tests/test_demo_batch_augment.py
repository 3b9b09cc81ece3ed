"""The in-memory training path: `decode_images` and `BatchAugment` against the per-image transforms."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from reidfast.data.transforms import BatchAugment, Normalize, Pad, decode_images

HEIGHT, WIDTH, PAD = 16, 8, 3


def _images(batch: int = 6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, HEIGHT, WIDTH), dtype=torch.uint8, generator=generator)


def _per_image(image: torch.Tensor, flip: bool, top: int, left: int, box: list[int] | None) -> torch.Tensor:
    """The per-image pipeline with its random choices given: ToTensor, flip, Pad + crop, Normalize, erase."""
    x = image.float() / 255.0
    if flip:  # BatchAugment mirrors its window: the same as flipping first and cropping at 2 * PAD - left
        x, left = x.flip(-1), 2 * PAD - left
    x = Pad(PAD)(x)[:, top:top + HEIGHT, left:left + WIDTH]
    x = Normalize()(x)
    if box is not None:
        t, l, h, w = box
        x = x.clone()
        x[:, t:t + h, l:l + w] = 0.0
    return x


@pytest.mark.parametrize("erasing_p", [0.0, 1.0])
def test_batch_equals_the_per_image_pipeline_with_the_same_choices(erasing_p):
    images = _images()
    augment = BatchAugment(padding=PAD, flip_p=0.5, erasing_p=erasing_p)
    params = augment.sample(len(images), HEIGHT, WIDTH, torch.Generator().manual_seed(1))
    out = augment.apply(images, params)
    assert out.shape == (len(images), 3, HEIGHT, WIDTH) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    for i, image in enumerate(images):
        box = params["erase_box"][i].tolist() if bool(params["erase"][i]) else None
        expected = _per_image(image, bool(params["flip"][i]), int(params["top"][i]), int(params["left"][i]), box)
        torch.testing.assert_close(out[i], expected, rtol=0, atol=1e-5, msg=f"image {i}")


def test_the_choices_follow_the_per_image_distributions():
    augment = BatchAugment(padding=PAD, flip_p=0.5, erasing_p=0.5)
    params = augment.sample(4000, HEIGHT, WIDTH, torch.Generator().manual_seed(2))
    assert 0.45 < params["flip"].float().mean() < 0.55 and 0.45 < params["erase"].float().mean() < 0.55
    for name in ("top", "left"):  # every offset of the padded image, uniformly
        counts = torch.bincount(params[name], minlength=2 * PAD + 1)
        assert len(counts) == 2 * PAD + 1 and counts.min() > 4000 / (2 * PAD + 1) * 0.8
    top, left, height, width = params["erase_box"][params["erase"]].T
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= HEIGHT).all() and (left + width <= WIDTH).all()
    assert (height > 0).all() and (width > 0).all() and (height < HEIGHT).all() and (width < WIDTH).all()
    area = (height * width).float() / (HEIGHT * WIDTH)
    assert area.max() <= 0.55  # scale (0.02, 0.4), widened by rounding the sides on this small image


def test_same_generator_seed_same_batch_and_another_seed_another():
    images = _images()
    augment = BatchAugment(padding=PAD)
    first = augment(images, torch.Generator().manual_seed(5))
    torch.testing.assert_close(augment(images, torch.Generator().manual_seed(5)), first, rtol=0, atol=0)
    assert not torch.equal(augment(images, torch.Generator().manual_seed(6)), first)


def test_no_augmentation_is_just_normalisation():
    images = _images()
    out = BatchAugment(padding=0, flip_p=0.0, erasing_p=0.0)(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, torch.stack([Normalize()(image.float() / 255.0) for image in images]),
                               rtol=0, atol=1e-5)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="images: expected a uint8"):
        BatchAugment()(torch.zeros(2, 3, HEIGHT, WIDTH))
    with pytest.raises(ValueError, match="padding: expected"):
        BatchAugment(padding=-1)
    with pytest.raises(ValueError, match="p: expected a probability in"):
        BatchAugment(erasing_p=1.5)


def test_decode_images_keeps_pixels_and_resizes_others(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "same.png")
    Image.fromarray(np.full((2 * HEIGHT, 2 * WIDTH, 3), 77, np.uint8)).save(tmp_path / "large.png")
    decoded = decode_images([str(tmp_path / "same.png"), str(tmp_path / "large.png")], HEIGHT, WIDTH)
    assert decoded.shape == (2, 3, HEIGHT, WIDTH) and decoded.dtype == torch.uint8
    assert torch.equal(decoded[0], torch.from_numpy(pixels).permute(2, 0, 1))
    assert torch.equal(decoded[1], torch.full((3, HEIGHT, WIDTH), 77, dtype=torch.uint8))
