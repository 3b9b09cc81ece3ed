"""Data: re-ID dataset loaders, pure-torch transforms and identity-balanced samplers."""
from __future__ import annotations

from .datasets import (
    ImageDataset,
    ImageRecord,
    ReIDDataset,
    UnreadableImageError,
    load_cuhk03_np,
    load_dukemtmc,
    load_folder,
    load_market1501,
    load_msmt17,
)
from .samplers import DistributedPKSampler, PKSampler, balanced_weighted_sampler
from .synthetic import EmbeddingSplit, make_synthetic_reid, synthetic_embeddings
from .transforms import (
    Compose,
    Normalize,
    Pad,
    RandomCrop,
    RandomErasing,
    RandomHorizontalFlip,
    Resize,
    ToTensor,
    build_transforms,
)

__all__ = [
    "Compose",
    "DistributedPKSampler",
    "EmbeddingSplit",
    "ImageDataset",
    "ImageRecord",
    "Normalize",
    "PKSampler",
    "Pad",
    "RandomCrop",
    "RandomErasing",
    "RandomHorizontalFlip",
    "ReIDDataset",
    "Resize",
    "ToTensor",
    "UnreadableImageError",
    "balanced_weighted_sampler",
    "build_transforms",
    "load_cuhk03_np",
    "load_dukemtmc",
    "load_folder",
    "load_market1501",
    "load_msmt17",
    "make_synthetic_reid",
    "synthetic_embeddings",
]
