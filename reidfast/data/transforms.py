"""Image transforms in pure torch (no torchvision): PIL -> (3, H, W) float tensors and re-ID augmentations.

Random transforms take an optional ``torch.Generator`` so a pipeline is reproducible for a seed.
`decode_images` + `BatchAugment` are the in-memory fast path of training: every image decoded once into a
uint8 tensor, and the train augmentations drawn and applied to whole batches on the model's device.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "Compose",
    "ToTensor",
    "Resize",
    "RandomHorizontalFlip",
    "Pad",
    "RandomCrop",
    "RandomErasing",
    "Normalize",
    "build_transforms",
    "decode_images",
    "BatchAugment",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_image(image: torch.Tensor, who: str) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        raise ValueError(f"{who} expects a (C, H, W) tensor, got {type(image).__name__} "
                         f"{tuple(image.shape) if isinstance(image, torch.Tensor) else ''}")


def _pair(size, name: str) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or any(int(s) <= 0 for s in size):
        raise ValueError(f"{name}: expected a positive int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(low: int, high_inclusive: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(low, high_inclusive + 1, (), generator=generator).item())


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image):
        for transform in self.transforms:
            image = transform(image)
        return image

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class ToTensor:
    """PIL image (H, W) -> float32 (3, H, W) in [0, 1] (converted to RGB)."""

    def __call__(self, image) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            _check_image(image, "ToTensor")
            return image.float()
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)

    def __repr__(self) -> str:
        return "ToTensor()"


class Resize:
    """(C, H, W) -> (C, height, width), bilinear with antialiasing."""

    def __init__(self, size: int | tuple[int, int]):
        self.size = _pair(size, "Resize size")

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _check_image(image, "Resize")
        if tuple(image.shape[-2:]) == self.size:
            return image
        return F.interpolate(image[None].float(), size=self.size, mode="bilinear", align_corners=False,
                             antialias=True)[0]

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class RandomHorizontalFlip:
    """Mirror the width axis with probability p."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: expected a probability in [0, 1], got {p}")
        self.p, self.generator = p, generator

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _check_image(image, "RandomHorizontalFlip")
        if torch.rand((), generator=self.generator).item() < self.p:
            return image.flip(-1)
        return image

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Pad:
    """Zero-pad `padding` pixels on every side (or (left/right, top/bottom)): (C, H, W) -> (C, H+2t, W+2l)."""

    def __init__(self, padding: int | tuple[int, int], fill: float = 0.0):
        if isinstance(padding, int):
            padding = (padding, padding)
        if len(padding) != 2 or any(int(p) < 0 for p in padding):
            raise ValueError(f"padding: expected an int >= 0 or (horizontal, vertical), got {padding!r}")
        self.padding, self.fill = (int(padding[0]), int(padding[1])), fill

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _check_image(image, "Pad")
        horizontal, vertical = self.padding
        return F.pad(image, (horizontal, horizontal, vertical, vertical), value=self.fill)

    def __repr__(self) -> str:
        return f"Pad({self.padding})"


class RandomCrop:
    """Crop a random (height, width) window: (C, H, W) -> (C, height, width); H >= height, W >= width."""

    def __init__(self, size: int | tuple[int, int], generator: torch.Generator | None = None):
        self.size, self.generator = _pair(size, "RandomCrop size"), generator

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _check_image(image, "RandomCrop")
        height, width = self.size
        image_height, image_width = image.shape[-2:]
        if image_height < height or image_width < width:
            raise ValueError(f"RandomCrop size {self.size} is larger than the image {(image_height, image_width)}")
        top = _randint(0, image_height - height, self.generator)
        left = _randint(0, image_width - width, self.generator)
        return image[:, top:top + height, left:left + width]

    def __repr__(self) -> str:
        return f"RandomCrop({self.size})"


class RandomErasing:
    """Random Erasing (Zhong et al., AAAI 2020), as in torchreid.

    With probability p, up to 100 attempts draw an area fraction in `scale` and an aspect ratio uniformly in
    `ratio`; the first rectangle that fits is filled with `value` (a float or one value per channel).
    Apply after Normalize, where value 0 is the dataset mean.
    """

    def __init__(self, p: float = 0.5, scale: tuple[float, float] = (0.02, 0.4),
                 ratio: tuple[float, float] = (0.3, 1 / 0.3), value: float | Sequence[float] = 0.0,
                 generator: torch.Generator | None = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: expected a probability in [0, 1], got {p}")
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale: expected 0 < low <= high <= 1, got {scale}")
        if not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio: expected 0 < low <= high, got {ratio}")
        self.p, self.scale, self.ratio, self.value, self.generator = p, scale, ratio, value, generator

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _check_image(image, "RandomErasing")
        if torch.rand((), generator=self.generator).item() >= self.p:
            return image
        channels, height, width = image.shape
        area = height * width
        for _ in range(100):
            target_area = _uniform(*self.scale, self.generator) * area
            aspect_ratio = _uniform(*self.ratio, self.generator)
            erase_height = int(round(math.sqrt(target_area * aspect_ratio)))
            erase_width = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < erase_height < height and 0 < erase_width < width:
                top = _randint(0, height - erase_height, self.generator)
                left = _randint(0, width - erase_width, self.generator)
                value = torch.as_tensor(self.value, dtype=image.dtype).reshape(-1, 1, 1)
                if value.numel() not in (1, channels):
                    raise ValueError(f"RandomErasing value needs 1 or {channels} entries, got {value.numel()}")
                image = image.clone()
                image[:, top:top + erase_height, left:left + erase_width] = value
                return image
        return image

    def __repr__(self) -> str:
        return f"RandomErasing(p={self.p}, scale={self.scale}, ratio={self.ratio}, value={self.value})"


class Normalize:
    """(image - mean) / std per channel on a (C, H, W) tensor."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        if self.mean.numel() != self.std.numel():
            raise ValueError(f"mean and std need the same length, got {len(mean)} and {len(std)}")
        if bool((self.std <= 0).any()):
            raise ValueError(f"std: expected positive values, got {tuple(std)}")

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _check_image(image, "Normalize")
        if image.shape[0] != self.mean.numel():
            raise ValueError(f"Normalize has {self.mean.numel()} channels, image has {image.shape[0]}")
        return (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def build_transforms(height: int = 256, width: int = 128, train: bool = True, padding: int = 10,
                     flip_p: float = 0.5, erasing_p: float = 0.5, mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD, generator: torch.Generator | None = None) -> Compose:
    """The usual re-ID pipelines, PIL -> (3, height, width) normalised float tensor.

    train: ToTensor, Resize, RandomHorizontalFlip, Pad + RandomCrop, Normalize, RandomErasing.
    test:  ToTensor, Resize, Normalize.
    A shared `generator` is copied into each DataLoader worker, so with num_workers > 0 leave it None
    (torch seeds each worker's default generator differently) unless you want identical augmentations.
    """
    size = _pair((height, width), "build_transforms (height, width)")
    steps: list[Callable] = [ToTensor(), Resize(size)]
    if train:
        steps += [RandomHorizontalFlip(flip_p, generator)]
        if padding > 0:
            steps += [Pad(padding), RandomCrop(size, generator)]
        steps += [Normalize(mean, std), RandomErasing(erasing_p, value=0.0, generator=generator)]
    else:
        steps += [Normalize(mean, std)]
    return Compose(steps)


def decode_images(paths: Sequence[str], height: int, width: int) -> torch.Tensor:
    """Decode the images at `paths` once, resized to (height, width): uint8 (N, 3, height, width).

    Memory: N * 3 * height * width bytes (1.3 GB for Market-1501's 12,936 training images at 256 x 128).
    Images already at that size are kept bit for bit; others are resized as `Resize` does, then rounded.
    """
    from .datasets import read_image

    size = _pair((height, width), "decode_images (height, width)")
    out = torch.empty((len(paths), 3, *size), dtype=torch.uint8)
    for index, path in enumerate(paths):
        image = torch.from_numpy(np.asarray(read_image(path), dtype=np.uint8).copy()).permute(2, 0, 1)
        if tuple(image.shape[-2:]) != size:
            resized = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False,
                                    antialias=True)[0]
            image = resized.round_().clamp_(0, 255).to(torch.uint8)
        out[index] = image
    return out


class BatchAugment:
    """`build_transforms(train=True)` on whole batches: uint8 (B, 3, H, W) -> normalised float32 (B, 3, H, W).

    Per image, with the same distributions as the per-image pipeline: a horizontal flip with probability
    flip_p, a random (H, W) window of the image zero-padded by `padding` pixels, Normalize, and Random
    Erasing with probability erasing_p (up to 100 tries of area fraction in `scale`, aspect ratio uniform in
    `ratio`; the first that fits is set to 0, the mean). The random draws come from `generator` (on the
    CPU, a few numbers per image) and the pixels are moved on the images' device, so the batch never goes
    back to the host. Output is channels_last.
    """

    def __init__(self, padding: int = 10, flip_p: float = 0.5, erasing_p: float = 0.5,
                 scale: tuple[float, float] = (0.02, 0.4), ratio: tuple[float, float] = (0.3, 1 / 0.3),
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, attempts: int = 100):
        if not (isinstance(padding, int) and padding >= 0):
            raise ValueError(f"padding: expected an int >= 0, got {padding!r}")
        RandomHorizontalFlip(flip_p)  # the per-image classes validate the arguments
        RandomErasing(erasing_p, scale, ratio)
        self.padding, self.flip_p, self.erasing_p = padding, flip_p, erasing_p
        self.scale, self.ratio, self.attempts = scale, ratio, attempts
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1) * 255.0
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1) * 255.0

    def sample(self, batch: int, height: int, width: int, generator: torch.Generator | None = None
               ) -> dict[str, torch.Tensor]:
        """The random choices for a batch: flip (B,) bool, top/left (B,) crop offsets in the padded image,
        erase (B,) bool and erase_box (B, 4) = top, left, height, width of the erased rectangle."""
        pad = self.padding
        flip = torch.rand(batch, generator=generator) < self.flip_p
        top = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
        left = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
        erase = torch.rand(batch, generator=generator) < self.erasing_p
        area = height * width * (self.scale[0] + (self.scale[1] - self.scale[0])
                                 * torch.rand(batch, self.attempts, generator=generator, dtype=torch.float64))
        aspect = self.ratio[0] + (self.ratio[1] - self.ratio[0]) * torch.rand(
            batch, self.attempts, generator=generator, dtype=torch.float64)
        box_height = torch.round(torch.sqrt(area * aspect)).long()
        box_width = torch.round(torch.sqrt(area / aspect)).long()
        fits = (box_height > 0) & (box_height < height) & (box_width > 0) & (box_width < width)
        first = fits.int().argmax(1, keepdim=True)  # the first try that fits, as RandomErasing takes
        box_height, box_width = box_height.gather(1, first)[:, 0], box_width.gather(1, first)[:, 0]
        erase &= fits.any(1)
        box_top = (torch.rand(batch, generator=generator, dtype=torch.float64) * (height - box_height + 1)).long()
        box_left = (torch.rand(batch, generator=generator, dtype=torch.float64) * (width - box_width + 1)).long()
        box = torch.stack([box_top, box_left, box_height, box_width], 1)
        return {"flip": flip, "top": top, "left": left, "erase": erase, "erase_box": box}

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Apply `sample`'s choices to uint8 (B, 3, H, W) images -> normalised float32 channels_last."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images: expected a uint8 (B, 3, H, W) tensor, got "
                             f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
        batch, _, height, width = images.shape
        device = images.device
        params = {name: value.to(device) for name, value in params.items()}
        pad = self.padding
        padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
        rows = params["top"][:, None] + torch.arange(height, device=device)
        columns = torch.arange(width, device=device).expand(batch, width)
        columns = torch.where(params["flip"][:, None], columns.flip(1), columns) + params["left"][:, None]
        # indices split by the channel slice put the batch dims first: (B, H, W, 3)
        crops = padded[torch.arange(batch, device=device)[:, None, None], :, rows[:, :, None], columns[:, None, :]]
        out = (crops.permute(0, 3, 1, 2).float() - self.mean.to(device)) / self.std.to(device)
        box = params["erase_box"]
        row_grid, column_grid = torch.arange(height, device=device), torch.arange(width, device=device)
        inside_rows = (row_grid >= box[:, :1]) & (row_grid < box[:, :1] + box[:, 2:3])
        inside_columns = (column_grid >= box[:, 1:2]) & (column_grid < box[:, 1:2] + box[:, 3:4])
        erased = params["erase"][:, None, None] & inside_rows[:, :, None] & inside_columns[:, None, :]
        return out.masked_fill(erased[:, None], 0.0).contiguous(memory_format=torch.channels_last)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, self.sample(images.shape[0], images.shape[2], images.shape[3], generator))

    def __repr__(self) -> str:
        return (f"BatchAugment(padding={self.padding}, flip_p={self.flip_p}, erasing_p={self.erasing_p}, "
                f"scale={self.scale}, ratio={self.ratio})")
