"""Segmentation models: dilated backbones (output stride), torchvision's LR-ASPP and DeepLabv3
twins, Mobile DeepLabv3 on V2. (Data, training and evaluation are not built yet: issue 16.)"""

from __future__ import annotations

import pytest
import torch
import torchvision

import mobilenets
from mobilenets.cost import profile
from mobilenets.errors import ConfigError


@pytest.mark.parametrize("name, output_stride", [("mobilenet_v2", 16), ("mobilenet_v2", 8), ("mobilenet_v3_large", 16),
                                                 ("mobilenet_v3_small", 16)])  # fmt: skip
def test_output_stride_dilates_instead_of_striding(name, output_stride):
    plain = mobilenets.create_model(name)
    dense = mobilenets.create_model(name, output_stride=output_stride)
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in dense.parameters())
    x = torch.randn(1, 3, 128, 128)
    assert dense.eval().features(x).shape[-1] == 128 // output_stride and dense.total_stride == output_stride
    dilations = {m.dilation[0] for m in dense.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1}
    assert max(dilations) == 32 // output_stride
    with pytest.raises(ConfigError, match="output_stride"):
        mobilenets.create_model(name, output_stride=4)


def test_dilated_v3_is_torchvisions_dilated_backbone():
    ours = mobilenets.create_model("mobilenet_v3_large", output_stride=16).eval()
    theirs = torchvision.models.mobilenet_v3_large(dilated=True).eval()
    mobilenets.load_weights(ours, theirs.state_dict())
    x = torch.randn(1, 3, 160, 160)
    torch.testing.assert_close(ours.features(x), theirs.features(x))


def _randomised(model):
    state = model.state_dict()
    generator = torch.Generator().manual_seed(2)
    for key, value in state.items():
        if value.is_floating_point():
            noise = torch.rand(value.shape, generator=generator) + 0.5 if key.endswith("running_var") else (
                torch.randn(value.shape, generator=generator) * 0.1)  # fmt: skip
            value.copy_(noise)
    return state


@pytest.mark.parametrize(
    "name, options, params",
    [
        ("lraspp_mobilenet_v3_large", {}, 3_221_538),  # torchvision's model card
        ("deeplabv3_mobilenet_v3_large", {}, 11_025_477),
        ("deeplabv3_mobilenet_v3_large", {"aux_loss": True}, 11_029_328),
    ],
)
def test_segmentation_twins_of_torchvision(name, options, params):
    """torchvision's state dict loads and the outputs are torchvision's, at an input size
    that is not a multiple of the stride."""
    ours = mobilenets.create_model(name, **options)
    theirs = torchvision.models.get_model(name, weights=None, weights_backbone=None, **options)
    assert sum(p.numel() for p in ours.parameters()) == params
    state = _randomised(theirs)
    theirs.load_state_dict(state)
    mobilenets.load_weights(ours, state)
    x = torch.randn(1, 3, 200, 264)
    a, b = ours.eval()(x), theirs.eval()(x)
    assert set(a) == set(b) and a["out"].shape == (1, 21, 200, 264)
    for key in b:
        torch.testing.assert_close(a[key], b[key])


def test_mobile_deeplabv3_variants_and_their_costs():
    """ASPP is optional (the V2 paper's cheap variant drops it) and output stride 8 keeps
    4x larger maps in the last stages: same parameters, several times the mult-adds."""
    full = profile(mobilenets.create_model("deeplabv3_mobilenet_v2"), 512)
    cheap = profile(mobilenets.create_model("deeplabv3_mobilenet_v2", aspp=False), 512)
    dense = profile(mobilenets.create_model("deeplabv3_mobilenet_v2", output_stride=8), 512)
    assert cheap.params < full.params and cheap.mult_adds < full.mult_adds
    assert dense.params == full.params and dense.mult_adds > 3 * full.mult_adds
    model = mobilenets.create_model("deeplabv3_mobilenet_v2", num_classes=5).eval()
    assert model(torch.randn(2, 3, 96, 128))["out"].shape == (2, 5, 96, 128)
    assert model.backbone.body.out_channels == [320]  # the last bottleneck, not the 1280-wide conv


def test_segmentation_backbones_take_imagenet_weights(shared_data):
    from .conftest import TORCHVISION_V2_WEIGHTS

    model = mobilenets.create_model("deeplabv3_mobilenet_v2")
    mobilenets.load_weights(model.backbone.body, TORCHVISION_V2_WEIGHTS)
    tv = torchvision.models.mobilenet_v2()
    tv.load_state_dict(torch.load(TORCHVISION_V2_WEIGHTS, weights_only=True))
    torch.testing.assert_close(model.backbone.body.features[3].project.conv.weight, tv.features[3].conv[2].weight)


def test_models_lists_segmentation(capsys):
    from mobilenets.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out.split("semantic segmentation")[1]
    assert "lraspp_mobilenet_v3_large" in out and "deeplabv3_mobilenet_v2" in out
