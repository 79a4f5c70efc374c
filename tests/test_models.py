"""Architecture tests: the built networks are the papers' tables, and bad input
gets a clear error instead of a stack trace from deep inside torch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mobilenets import ConfigError, InputShapeError, UnknownModelError, create_model, list_models
from mobilenets.layers import ConvBNAct, DepthwiseSeparable, InvertedResidual, make_divisible

ALL = ["mobilenet_v1", "mobilenet_v1_conv", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"]


def test_registry_lists_the_published_variants():
    assert set(ALL) <= set(list_models())


@pytest.mark.parametrize("name", ALL)
def test_forward_shapes_imagenet_and_cifar(name):
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 96, 96)).shape == (2, 7)
        cifar = create_model(name, num_classes=10, cifar=True).eval()
        assert cifar.total_stride == 8
        assert cifar.forward_features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)
        assert cifar(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_mobilenet_v1_follows_table_1():
    model = create_model("mobilenet_v1")
    shapes, x = [], torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        for layer in model.features:
            x = layer(x)
            shapes.append(tuple(x.shape[1:]))
    assert isinstance(model.features[0], ConvBNAct) and model.features[0].stride == 2
    assert all(isinstance(m, DepthwiseSeparable) for m in model.features[1:])
    assert shapes == [
        (32, 112, 112), (64, 112, 112), (128, 56, 56), (128, 56, 56), (256, 28, 28), (256, 28, 28),
        (512, 14, 14), *[(512, 14, 14)] * 5, (1024, 7, 7), (1024, 7, 7),
    ]  # fmt: skip
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 27  # BN + ReLU after every conv
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 27


def test_mobilenet_v1_width_is_floor_of_alpha_times_channels():
    model = create_model("mobilenet_v1", width_mult=0.3)
    widths = [model.features[0].out_channels] + [m.out_channels for m in model.features[1:]]
    assert widths == [int(c * 0.3) for c in [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]]


def test_mobilenet_v2_follows_table_2():
    model = create_model("mobilenet_v2")
    blocks = [m for m in model.features if isinstance(m, InvertedResidual)]
    assert len(blocks) == 17
    assert [b.out_channels for b in blocks] == [16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320]
    assert [b.stride for b in blocks] == [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    assert [b.expanded_channels // b.in_channels for b in blocks] == [1] + [6] * 16
    assert sum(b.use_residual for b in blocks) == 10  # n - 1 per stage
    assert blocks[0].expand is None  # expansion 1 has no 1x1 expand conv
    # Linear bottleneck: nothing after the projection's batch norm.
    assert all(not hasattr(b.project, "act") for b in blocks)
    assert model.features[-1].out_channels == 1280


@pytest.mark.parametrize("width, stem, last", [(0.35, 16, 1280), (0.5, 16, 1280), (1.4, 48, 1792)])
def test_mobilenet_v2_width_rounding(width, stem, last):
    model = create_model("mobilenet_v2", width_mult=width)
    assert model.features[0].out_channels == stem
    assert model.features[-1].out_channels == last  # not narrowed below 1280
    for block in model.features[1:-1]:
        assert block.out_channels % 8 == 0


def test_make_divisible_never_drops_more_than_ten_percent():
    for value in range(1, 2000):
        for divisor in (4, 8, 16):
            rounded = make_divisible(value, divisor)
            assert rounded % divisor == 0 and rounded >= 0.9 * value and rounded >= divisor


def test_mobilenet_v2_ablations():
    relu = create_model("mobilenet_v2", activation="relu")
    assert not any(isinstance(m, nn.ReLU6) for m in relu.modules())
    assert any(isinstance(m, nn.ReLU) for m in relu.modules())
    nonlinear = create_model("mobilenet_v2", linear_bottleneck=False)
    assert all(isinstance(b.project.act, nn.ReLU6) for b in nonlinear.features if isinstance(b, InvertedResidual))
    plain = create_model("mobilenet_v2", residual=False)
    assert not any(b.use_residual for b in plain.features if isinstance(b, InvertedResidual))
    # Residual ablation changes outputs but not parameters.
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in relu.parameters())


def test_inverted_residual_adds_its_input():
    block = InvertedResidual(16, 16, 1, expanded_channels=96).eval()
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        inner = block.project(block.depthwise(block.expand(x)))
        assert torch.allclose(block(x), inner + x)


def test_mobilenet_v3_structure():
    large = create_model("mobilenet_v3_large")
    blocks = [m for m in large.features if isinstance(m, InvertedResidual)]
    assert len(blocks) == 15
    assert sum(b.se is not None for b in blocks) == 8
    assert [b.depthwise.conv.kernel_size[0] for b in blocks].count(5) == 6
    assert isinstance(large.features[0].act, nn.Hardswish)
    assert large.features[-1].out_channels == 960
    assert blocks[3].se.reduce.out_channels == 24  # a quarter of 72, rounded to 8
    small = create_model("mobilenet_v3_small")
    assert len([m for m in small.features if isinstance(m, InvertedResidual)]) == 11
    assert small.features[-1].out_channels == 576


# ------------------------------------------------------------------ bad input
def test_unknown_model_suggests_nearest():
    with pytest.raises(UnknownModelError, match="did you mean 'mobilenet_v2'"):
        create_model("mobilenetv2")
    with pytest.raises(KeyError):  # still a KeyError for callers that catch that
        create_model("resnet9000")


@pytest.mark.parametrize("width", [0, -0.5, math.nan, math.inf, "wide"])
def test_invalid_width_mult(width):
    with pytest.raises(ConfigError, match="width_mult"):
        create_model("mobilenet_v2", width_mult=width)


def test_width_that_rounds_to_zero_channels():
    with pytest.raises(ConfigError, match="rounds to zero"):
        create_model("mobilenet_v1", width_mult=0.02)
    create_model("mobilenet_v1", width_mult=1 / 32)  # narrowest that still has a channel


def test_unknown_option_and_activation():
    with pytest.raises(ConfigError, match="does not take option"):
        create_model("mobilenet_v3_large", activation="relu")
    with pytest.raises(ConfigError, match="unknown activation"):
        create_model("mobilenet_v2", activation="gelu-ish")
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("mobilenet_v2", num_classes=0)


def test_bad_input_tensors():
    model = create_model("mobilenet_v2").eval()
    with pytest.raises(InputShapeError, match="unsqueeze"):
        model(torch.randn(3, 224, 224))
    with pytest.raises(InputShapeError, match="channels-last"):
        model(torch.randn(1, 224, 224, 3))
    with pytest.raises(InputShapeError, match="3 input channels, got 1"):
        model(torch.randn(1, 1, 224, 224))
    with pytest.raises(InputShapeError, match="smaller than the network's total stride 32"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(InputShapeError, match="floating-point"):
        model(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))


def test_non_square_and_other_channel_counts():
    model = create_model("mobilenet_v1", in_channels=1, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 96)).shape == (1, 5)
