"""A compact ResNet-style re-ID network in pure torch with a BNNeck head (Luo et al. 2019, "bag of tricks").

    model = ReIDModel(num_classes=751)                 # built-in backbone
    model = ReIDModel(751, backbone=my_backbone)       # any nn.Module: (B,3,H,W) -> (B,C,h,w) or (B,C)
    logits, feats = model(images)                      # train mode: ID logits, features before BN (triplet)
    model.eval(); emb = model(images)                  # eval mode: features after BN (retrieval)
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["BasicBlock", "ResNetBackbone", "BNNeckHead", "ReIDModel"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al. 2016)."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetBackbone(nn.Module):
    """ResNet with BasicBlock stages: stem (conv 3x3 stride 2 + max-pool), then len(layers) stages.

    Stage i has `layers[i]` blocks and width * 2**i channels; stages after the first downsample by 2, except
    the last one when last_stride=1 (the BoT trick: a 2x larger final feature map). layers=(2, 2, 2, 2) and
    width=64 with a 7x7 stem would be ResNet-18; the defaults are a much smaller network for CPU training.
    Output: (B, out_channels, H/s, W/s) feature map, s = 4 * 2**(len(layers) - 1) / (2 if last_stride == 1).
    """

    def __init__(self, width: int = 32, layers: Sequence[int] = (1, 1, 1, 1), last_stride: int = 2,
                 in_channels: int = 3) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width: expected a positive integer, got {width}")
        layers = tuple(int(n) for n in layers)
        if not layers or any(n < 1 for n in layers):
            raise ValueError(f"layers: expected a non-empty sequence of positive block counts, got {layers}")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride: expected 1 or 2, got {last_stride}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 2, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages = []
        channels = width
        for i, blocks in enumerate(layers):
            out_channels = width * 2 ** i
            stride = 1 if i == 0 else (last_stride if i == len(layers) - 1 else 2)
            stage = [BasicBlock(channels, out_channels, stride)]
            stage += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.out_channels = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class BNNeckHead(nn.Module):
    """BNNeck: BatchNorm1d with a frozen zero bias, then a bias-free linear ID classifier.

    forward(features) -> (logits, features_after_bn).
    """

    def __init__(self, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(feature_dim)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)  # BoT: no shift, so the BN features stay centred for the classifier
        self.classifier = nn.Linear(feature_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        after = self.bn(features)
        return self.classifier(after), after


def _infer_feature_dim(backbone: nn.Module, image_size: tuple[int, int]) -> int:
    was_training = backbone.training
    backbone.eval()
    try:
        parameter = next(backbone.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        with torch.no_grad():
            out = backbone(torch.zeros(2, 3, *image_size, device=device))
    finally:
        backbone.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() not in (2, 4):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"backbone must map (B, 3, H, W) images to a (B, C, h, w) or (B, C) tensor, got {shape}")
    return int(out.shape[1])


class ReIDModel(nn.Module):
    """Backbone -> global average pooling -> BNNeck (BoT baseline).

    Args:
        num_classes: number of training identities (size of the ID classifier).
        backbone: optional nn.Module mapping images (B, 3, H, W) to (B, C, h, w) or (B, C), e.g. a
            torchvision ResNet with its `fc`/`avgpool` replaced by nn.Identity (then it returns (B, C)).
            None builds `ResNetBackbone(width, layers, last_stride)`.
        width, layers, last_stride: the built-in backbone's base width, blocks per stage, last-stage stride.
        feature_dim: the backbone's output channels C; inferred (from `out_channels`, or a dummy forward at
            `image_size`) when None.
        image_size: (height, width) of the dummy forward used to infer feature_dim.

    Train mode: forward(images) -> (logits (B, num_classes), features before BN (B, C)) for ID + triplet
    losses. Eval mode: forward(images) -> features after BN (B, C), the retrieval embedding.
    """

    def __init__(self, num_classes: int, backbone: nn.Module | None = None, width: int = 32,
                 layers: Sequence[int] = (1, 1, 1, 1), last_stride: int = 1, feature_dim: int | None = None,
                 image_size: tuple[int, int] = (128, 64)) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected a positive integer, got {num_classes!r}")
        if backbone is None:
            backbone = ResNetBackbone(width, layers, last_stride)
        elif not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone: expected an nn.Module, got {type(backbone).__name__}")
        self.backbone = backbone
        if feature_dim is None:
            feature_dim = getattr(backbone, "out_channels", None)
            if not isinstance(feature_dim, int):
                feature_dim = _infer_feature_dim(backbone, tuple(image_size))
        self.feature_dim = int(feature_dim)
        self.num_classes = num_classes
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.neck = BNNeckHead(self.feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features before BN: (B, C)."""
        out = self.backbone(images)
        if out.dim() == 4:
            out = self.pool(out).flatten(1)
        elif out.dim() != 2:
            raise ValueError(f"backbone output: expected (B, C, h, w) or (B, C), got shape {tuple(out.shape)}")
        if out.shape[1] != self.feature_dim:
            raise ValueError(f"backbone returned {out.shape[1]} features, expected feature_dim={self.feature_dim}")
        return out

    def forward(self, images: torch.Tensor):
        before = self.features(images)
        logits, after = self.neck(before)
        if self.training:
            return logits, before
        return after
