"""reidfast.models: ResNet-style backbone + BNNeck (BoT) shapes, init, custom backbones, frozen BNNeck bias."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from reidfast.models import BNNeckHead, ReIDModel, ResNetBackbone

H, W = 64, 32


@pytest.fixture
def images():
    torch.manual_seed(0)
    return torch.randn(6, 3, H, W)


def test_train_mode_returns_logits_and_features_before_bn(images):
    model = ReIDModel(5, width=8, image_size=(H, W))
    logits, features = model(images)
    assert logits.shape == (6, 5)
    assert features.shape == (6, model.feature_dim) == (6, 8 * 8)
    assert torch.allclose(features, model.features(images))  # pooled backbone output, no BN applied
    assert (features >= 0).all()  # after ReLU + average pooling


def test_eval_mode_returns_features_after_bn(images):
    model = ReIDModel(5, width=8)
    model.train()
    for _ in range(3):  # give the BNNeck non-trivial running statistics
        model(images * 3 + 1)
    model.eval()
    with torch.no_grad():
        embeddings = model(images)
        before = model.features(images)
    assert isinstance(embeddings, torch.Tensor) and embeddings.shape == (6, model.feature_dim)
    bn = model.neck.bn
    expected = (before - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    assert torch.allclose(embeddings, expected, atol=1e-5)
    assert not torch.allclose(embeddings, before)


def test_last_stride_one_doubles_the_final_feature_map(images):
    torch.manual_seed(0)
    strided = ResNetBackbone(width=8, layers=(1, 1, 1, 1), last_stride=2)
    unstrided = ResNetBackbone(width=8, layers=(1, 1, 1, 1), last_stride=1)
    out2, out1 = strided(images), unstrided(images)
    assert out2.shape == (6, 64, H // 32, W // 32)
    assert out1.shape == (6, 64, H // 16, W // 16)
    assert ResNetBackbone(width=4, layers=(2, 1, 3)).out_channels == 16
    # the model's embedding size does not depend on the stride
    assert ReIDModel(3, width=8, last_stride=2)(images)[1].shape == ReIDModel(3, width=8, last_stride=1)(images)[1].shape


def test_blocks_per_stage_and_width_are_configurable():
    backbone = ResNetBackbone(width=4, layers=(2, 1, 3))
    assert [len(stage) for stage in backbone.stages] == [2, 1, 3]
    assert [stage[0].conv1.out_channels for stage in backbone.stages] == [4, 8, 16]
    small = sum(p.numel() for p in ResNetBackbone(width=4).parameters())
    large = sum(p.numel() for p in ResNetBackbone(width=8).parameters())
    assert large > 3 * small


def test_custom_feature_map_backbone_infers_feature_dim(images):
    backbone = nn.Sequential(nn.Conv2d(3, 12, 3, 2, 1), nn.ReLU(), nn.Conv2d(12, 20, 3, 2, 1))
    model = ReIDModel(4, backbone=backbone, image_size=(H, W))
    assert model.backbone is backbone and model.feature_dim == 20
    logits, features = model(images)
    assert logits.shape == (6, 4) and features.shape == (6, 20)
    model.eval()
    assert model(images).shape == (6, 20)


def test_custom_vector_backbone_with_given_feature_dim(images):
    backbone = nn.Sequential(nn.Conv2d(3, 7, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = ReIDModel(3, backbone=backbone, feature_dim=7)
    logits, features = model(images)
    assert logits.shape == (6, 3)
    assert features.shape == (6, 7)
    wrong = ReIDModel(3, backbone=backbone, feature_dim=9)
    with pytest.raises(ValueError, match="feature_dim=9"):
        wrong(images)


def test_bad_backbones_and_arguments_are_rejected():
    class ThreeD(nn.Module):
        def forward(self, x):
            return x.flatten(2)

    with pytest.raises(ValueError, match=r"\(B, C, h, w\) or \(B, C\)"):
        ReIDModel(3, backbone=ThreeD())
    with pytest.raises(TypeError, match="nn.Module"):
        ReIDModel(3, backbone=lambda x: x)
    with pytest.raises(ValueError, match="num_classes"):
        ReIDModel(0)
    with pytest.raises(ValueError, match="last_stride"):
        ResNetBackbone(last_stride=3)
    with pytest.raises(ValueError, match="layers"):
        ResNetBackbone(layers=(1, 0))


def test_bnneck_bias_is_frozen_and_stays_zero(images):
    model = ReIDModel(4, width=8)
    bn = model.neck.bn
    assert bn.bias.requires_grad is False
    assert torch.equal(bn.bias, torch.zeros_like(bn.bias)) and torch.equal(bn.weight, torch.ones_like(bn.weight))
    assert model.neck.classifier.bias is None
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    logits, features = model(images)
    (logits.logsumexp(1).mean() + features.pow(2).mean()).backward()
    optimizer.step()
    assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    assert not torch.equal(bn.weight, torch.ones_like(bn.weight))  # the BN scale does train
    assert model.backbone.stem[0].weight.grad is not None


def test_initialisation_follows_bot():
    torch.manual_seed(0)
    model = ReIDModel(4, width=16)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
    conv = model.backbone.stages[1][0].conv1  # kaiming normal, fan_out: std = sqrt(2 / (out * 3 * 3))
    expected = (2.0 / (conv.out_channels * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.15)
    assert model.neck.classifier.weight.std().item() == pytest.approx(0.001, rel=0.2)
    assert isinstance(model.neck, BNNeckHead)
