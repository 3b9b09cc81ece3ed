"""Training settings (`TrainConfig`) and the device they name; see `reidfast.train` for the loop."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

__all__ = ["TrainConfig"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class TrainConfig:
    """Training settings (BoT defaults, scaled for the built-in compact model). Validated on creation.

    epochs: passes over the P x K sampler. batch_p identities x batch_k images per batch (both >= 2: the
    triplet loss needs positives and negatives). lr, weight_decay: Adam. warmup_epochs: linear warm-up from
    lr * warmup_factor to lr. milestones, gamma: step decay (epoch numbers, increasing). margin: triplet
    margin (float >= 0 or "soft"). label_smoothing: epsilon of the ID loss (0 = plain cross entropy).
    triplet_weight: weight of the triplet loss. eval_every: evaluate every N epochs (0: only after the
    last). rerank: also report re-ranked metrics in evaluations. seed. device: "auto" | "cpu" | "cuda" |
    "cuda:N". amp: mixed precision (CUDA only; ignored on CPU). num_workers: DataLoader workers.
    image_cache: decode the training images once into a uint8 tensor in memory (N x 3 x height x width
    bytes, on the training device) and augment whole batches there (BatchAugment); False decodes and
    augments image by image in DataLoader workers every epoch. height, width: input image size. padding
    (pixels of pad + random crop; None: height / 25.6, i.e. 10 at 256 x 128), flip_p, erasing_p: train
    augmentations (build_transforms). model_width, model_layers, last_stride: the built-in ReIDModel.
    progress: show tqdm bars.
    """

    epochs: int = 60
    batch_p: int = 16
    batch_k: int = 4
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    warmup_epochs: int = 10
    warmup_factor: float = 0.01
    milestones: tuple[int, ...] = (40, 70)
    gamma: float = 0.1
    margin: float | str = 0.3
    label_smoothing: float = 0.1
    triplet_weight: float = 1.0
    eval_every: int = 10
    rerank: bool = False
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    num_workers: int = 0
    image_cache: bool = True
    height: int = 256
    width: int = 128
    padding: int | None = None
    flip_p: float = 0.5
    erasing_p: float = 0.5
    model_width: int = 32
    model_layers: tuple[int, ...] = (1, 1, 1, 1)
    last_stride: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        self.milestones = tuple(self.milestones)
        self.model_layers = tuple(self.model_layers)
        problems = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        need(_is_int(self.epochs) and self.epochs >= 1, f"epochs: expected an integer >= 1, got {self.epochs!r}")
        need(_is_int(self.batch_p) and self.batch_p >= 2,
             f"batch_p: expected an integer >= 2 (the triplet loss needs negatives), got {self.batch_p!r}")
        need(_is_int(self.batch_k) and self.batch_k >= 2,
             f"batch_k: expected an integer >= 2 (the triplet loss needs positives), got {self.batch_k!r}")
        need(_is_number(self.lr) and self.lr > 0, f"lr: expected a positive number, got {self.lr!r}")
        need(_is_number(self.weight_decay) and self.weight_decay >= 0,
             f"weight_decay: expected >= 0, got {self.weight_decay!r}")
        need(_is_int(self.warmup_epochs) and self.warmup_epochs >= 0,
             f"warmup_epochs: expected an integer >= 0, got {self.warmup_epochs!r}")
        need(_is_number(self.warmup_factor) and 0 < self.warmup_factor <= 1,
             f"warmup_factor must lie in (0, 1], got {self.warmup_factor!r}")
        need(all(_is_int(m) and m >= 1 for m in self.milestones)
             and list(self.milestones) == sorted(set(self.milestones)),
             f"milestones: expected strictly increasing positive integers, got {self.milestones!r}")
        need(_is_number(self.gamma) and 0 < self.gamma <= 1, f"gamma must lie in (0, 1], got {self.gamma!r}")
        need(self.margin == "soft" or (_is_number(self.margin) and self.margin >= 0),
             f"margin: expected a number >= 0 or 'soft', got {self.margin!r}")
        need(_is_number(self.label_smoothing) and 0 <= self.label_smoothing < 1,
             f"label_smoothing must lie in [0, 1), got {self.label_smoothing!r}")
        need(_is_number(self.triplet_weight) and self.triplet_weight >= 0,
             f"triplet_weight: expected >= 0, got {self.triplet_weight!r}")
        need(_is_int(self.eval_every) and self.eval_every >= 0,
             f"eval_every: expected an integer >= 0, got {self.eval_every!r}")
        need(_is_int(self.seed), f"seed: expected an integer, got {self.seed!r}")
        need(isinstance(self.device, str) and (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")),
             f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        need(_is_int(self.num_workers) and self.num_workers >= 0,
             f"num_workers: expected an integer >= 0, got {self.num_workers!r}")
        need(isinstance(self.image_cache, bool), f"image_cache: expected True or False, got {self.image_cache!r}")
        need(_is_int(self.height) and self.height >= 16 and _is_int(self.width) and self.width >= 8,
             f"height, width (image size): expected integers >= 16 and >= 8, got ({self.height!r}, {self.width!r})")
        need(self.padding is None or (_is_int(self.padding) and self.padding >= 0),
             f"padding: expected None or an integer >= 0, got {self.padding!r}")
        need(_is_number(self.flip_p) and 0 <= self.flip_p <= 1, f"flip_p must lie in [0, 1], got {self.flip_p!r}")
        need(_is_number(self.erasing_p) and 0 <= self.erasing_p <= 1,
             f"erasing_p must lie in [0, 1], got {self.erasing_p!r}")
        need(_is_int(self.model_width) and self.model_width >= 1,
             f"model_width: expected an integer >= 1, got {self.model_width!r}")
        need(bool(self.model_layers) and all(_is_int(n) and n >= 1 for n in self.model_layers),
             f"model_layers: expected positive block counts, got {self.model_layers!r}")
        need(self.last_stride in (1, 2), f"last_stride: expected 1 or 2, got {self.last_stride!r}")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["milestones"], out["model_layers"] = list(self.milestones), list(self.model_layers)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {unknown}")
        return cls(**values)


def _resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """torch.device for "auto" | "cpu" | "cuda" | "cuda:N"; under DDP (local_rank given) CUDA means cuda:local_rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available (torch {torch.__version__}); "
                           "use device='cpu' or 'auto'")
    if device.type == "cuda" and local_rank is not None:
        if device.index is not None:
            raise ValueError(f"device={name!r} would put every DDP process on one GPU; use 'cuda' or 'auto' "
                             "(process LOCAL_RANK=r then uses cuda:r)")
        device = torch.device("cuda", local_rank)
    return device
