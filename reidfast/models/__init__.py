"""Re-ID models: a compact ResNet-style backbone with a BNNeck head (pure torch)."""
from __future__ import annotations

from .resnet import BasicBlock, BNNeckHead, ReIDModel, ResNetBackbone

__all__ = ["BasicBlock", "BNNeckHead", "ReIDModel", "ResNetBackbone"]
