"""Network decoupling: exactness at T = k^2, error falling with T, the cost formula,
rank allocation, refinement, the baselines, save/load, and bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mobilenets
from mobilenets.decouple import DecoupledConv, decompose, decouple, max_rank, singular_values


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


CONVS = [
    dict(in_channels=5, out_channels=7, kernel_size=3, padding=1),
    dict(in_channels=6, out_channels=4, kernel_size=3, stride=2, padding=2, dilation=2),
    dict(in_channels=3, out_channels=16, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), bias=False),
    dict(in_channels=4, out_channels=12, kernel_size=3, padding=1, padding_mode="reflect"),
    dict(in_channels=8, out_channels=8, kernel_size=5, padding=0),
]


@pytest.mark.parametrize("order", ["dw_pw", "pw_dw"])
@pytest.mark.parametrize("spec", CONVS)
def test_all_terms_reproduce_the_conv(order, spec):
    conv = nn.Conv2d(**spec)
    x = torch.randn(2, spec["in_channels"], 17, 15)
    full = DecoupledConv.from_conv(conv, max_rank(conv, order), order)
    assert rel(full(x), conv(x)) < 1e-5
    torch.testing.assert_close(full.to_conv().weight, conv.weight, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("order", ["dw_pw", "pw_dw"])
def test_error_falls_as_terms_are_added_and_matches_the_spectrum(order):
    conv = nn.Conv2d(32, 48, 3, padding=1)
    errors = []
    for t in range(1, 10):
        approx = DecoupledConv.from_conv(conv, t, order).to_conv().weight
        errors.append(((approx - conv.weight).norm() / conv.weight.norm()).item())
        # Eckart-Young: the kernel error is exactly the energy of the dropped singular values
        s2 = singular_values(conv.weight, order) ** 2
        assert errors[-1] == pytest.approx((s2[:, t:].sum() / s2.sum()).sqrt().item(), abs=1e-5)
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-6


def test_mult_adds_follow_the_formula():
    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1))
    new, report = decouple(model, rank=2, input_size=(16, 20, 20))
    k2 = 9
    expected_first = k2 * 16 * 2 * 400 + 16 * 2 * 32 * 400  # k^2 M T F^2 + M T N F^2
    expected_second = k2 * 32 * 2 * 100 + 32 * 2 * 64 * 100
    assert [layer.mult_adds_after for layer in report.layers] == [expected_first, expected_second]
    assert report.mult_adds_after == mobilenets.profile(new, (16, 20, 20)).mult_adds
    assert report.mult_adds_after == expected_first + expected_second
    assert isinstance(new[0], DecoupledConv) and isinstance(model[0], nn.Conv2d)  # input untouched


@pytest.mark.parametrize("order", ["dw_pw", "pw_dw"])
def test_whole_network_is_exact_at_k_squared_terms(order):
    model = mobilenets.create_model("vgg16", num_classes=10, cifar=True, width_mult=0.25).eval()
    with torch.no_grad():  # pretrained-like BN statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2)
    new, report = decouple(model, rank=9, order=order, replace_all=True)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert rel(new(x), model(x)) < 1e-5
    rows = {"dw_pw": 0, "pw_dw": 1}[order]  # the SVD's matrices have N (dw_pw) or M (pw_dw) rows
    assert [layer.rank for layer in report.layers] == [min(9, layer.kernel[rows]) for layer in report.layers]


def test_resnet_skips_1x1_and_target_reduction_is_met():
    model = mobilenets.create_model("resnet18", num_classes=10, cifar=True, width_mult=0.25).eval()
    new, report = decouple(model, target_reduction=2)
    assert report.reduction >= 2
    assert all(".downsample." not in layer.name for layer in report.layers)  # 1x1 shortcuts skipped
    assert "skipped" in report.extra
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert new(x).shape == (2, 10)
    uniform, uniform_report = decouple(model, target_reduction=2, allocation="uniform")
    assert uniform_report.reduction >= 2


def test_energy_threshold_keeps_at_least_that_energy():
    model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1))
    _, report = decouple(model, energy=0.5, input_size=(64, 8, 8))
    (layer,) = report.layers
    assert layer.retained_energy >= 0.5
    s2 = singular_values(model[0].weight) ** 2
    fewer = s2[:, : layer.rank - 1].sum() / s2.sum()
    assert layer.rank == 1 or fewer < 0.5


def test_refinement_with_calibration_images_reduces_the_network_error(shared_data):
    from mobilenets.data import calibration_images

    torch.manual_seed(0)
    model = mobilenets.create_model("vgg16", num_classes=10, cifar=True, width_mult=0.25).eval()
    images = calibration_images(shared_data / "cifar10" / "train", style="cifar", resolution=32, count=64)
    held_out = calibration_images(shared_data / "cifar10" / "test", style="cifar", resolution=32, count=32)
    early = ["features.1.conv", "features.3.conv", "features.4.conv", "features.6.conv"]  # 32x32 .. 8x8 maps
    plain, _ = decouple(model, rank=2, layers=early)
    refined, report = decouple(model, rank=2, layers=early, calibration=images)
    assert report.refined
    with torch.no_grad():
        reference = model.features[:8](held_out)
        assert rel(refined.features[:8](held_out), reference) < 0.8 * rel(plain.features[:8](held_out), reference)
    # Deep layers with 2x2 maps have fewer samples than unknowns: left as the SVD gives them, and said so.
    _, everything = decouple(model, rank=2, calibration=images[:8])
    assert any("too few" in layer.note for layer in everything.layers)


@pytest.mark.parametrize("method", ["spatial", "tucker", "cp", "channel"])
def test_baselines(method):
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=1)
    model = nn.Sequential(conv)
    x = torch.randn(2, 8, 9, 9)
    full_rank = {"spatial": 24, "tucker": 12, "cp": 8 * 9, "channel": 12}[method]
    new, report = decompose(model, method, rank=full_rank, input_size=(8, 9, 9), replace_all=True)
    with torch.no_grad():
        error = rel(new(x), conv(x))
    assert error < (1e-4 if method != "cp" else 0.05)  # CP-ALS is iterative
    assert new(x).shape == conv(x).shape
    small, small_report = decompose(model, method, target_reduction=2, input_size=(8, 9, 9))
    assert small_report.mult_adds_after <= report.mult_adds_before / 2 * 1.05


def test_conversion_methods_are_entries_whose_saved_structure_fits_the_fitted_layers():
    """Every method the command line offers is one registered entry; for each, the untrained
    structure a saved file is rebuilt into holds exactly the fitted layers' tensors, and its
    cost formula counts what the fitted layers compute."""
    from mobilenets.decouple.methods import conversion_method, method_names
    from mobilenets.validate import DECOMPOSITION_METHODS

    assert method_names() == [*DECOMPOSITION_METHODS, "decouple"]
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=1)
    for name in method_names():
        method = conversion_method(name)
        rank = min(4, method.max_rank(conv))
        moments = (torch.zeros(12), torch.eye(12)) if method.calibrated else None
        fitted = method.fit(conv, rank, moments, 0)
        step = {"method": name, "ranks": {"conv": rank}, **method.recorded([], moments is not None)}
        rebuilt = method.structure("conv", conv, rank, step)
        shapes = {k: v.shape for k, v in fitted.state_dict().items()}
        assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}, name
        counted = mobilenets.profile(fitted, (8, 9, 9)).mult_adds
        assert method.cost(conv, rank, (9, 9), (5, 5)) == counted, name
    with pytest.raises(mobilenets.ConfigError, match="method must be one of cp, tucker, spatial, channel, decouple"):
        conversion_method("svd")


def test_a_pw_dw_decoupling_records_its_order_and_rebuilds_into_it():
    """The saved step names the order, so the untrained structure a file is loaded into is the one fitted."""
    from mobilenets.decouple import apply_converted_structure

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    new, report = decouple(net, rank=2, order="pw_dw", input_size=(3, 8, 8), replace_all=True)
    assert report.method == "decouple-pw_dw"
    (step,) = new.arch["converted"]
    assert step["order"] == "pw_dw"
    rebuilt = apply_converted_structure(copy.deepcopy(net), [step])
    rebuilt.load_state_dict(new.state_dict())
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(rebuilt.eval()(x), new(x))


def test_channel_decomposition_fits_the_calibration_responses_best():
    """With calibration images the kept subspace is the responses' principal one, which
    (with the mean added back) is the best rank-R affine fit to them: it must beat the
    data-free choice on those images, and be exact at full rank."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 16, 3, padding=1)
    # inputs with very unequal channel scales, so the filters' own subspace is not the responses'
    images = torch.randn(16, 6, 10, 10) * torch.tensor([4.0, 2.0, 1.0, 0.5, 0.2, 0.1])[None, :, None, None] + 0.5
    model = nn.Sequential(conv)
    exact, _ = decompose(model, "channel", rank=16, calibration=images, input_size=(6, 10, 10), replace_all=True)
    free, free_report = decompose(model, "channel", rank=4, input_size=(6, 10, 10))
    fitted, fitted_report = decompose(model, "channel", rank=4, calibration=images, input_size=(6, 10, 10))
    assert free_report.mult_adds_after == fitted_report.mult_adds_after == (9 * 6 + 16) * 4 * 100
    with torch.no_grad():
        reference = conv(images)
        assert rel(exact(images), reference) < 1e-5
        assert rel(fitted(images), reference) < 0.9 * rel(free(images), reference)


def test_channel_then_decouple_meets_the_target(shared_data):
    from mobilenets.data import calibration_images

    torch.manual_seed(0)
    model = mobilenets.create_model("vgg16", num_classes=10, cifar=True, width_mult=0.25).eval()
    images = calibration_images(shared_data / "cifar10" / "train", style="cifar", resolution=32, count=32)
    new, report = decompose(model, "channel+decouple", target_reduction=3, calibration=images)
    assert report.method == "channel+decouple" and 3 <= report.reduction < 3.3
    assert report.mult_adds_before == mobilenets.profile(model, (3, 32, 32)).mult_adds
    assert any(isinstance(m, DecoupledConv) for m in new.modules())
    assert new(images[:2]).shape == (2, 10)
    with pytest.raises(mobilenets.ConfigError, match="target_reduction"):
        decompose(model, "channel+decouple", rank=2)
    with pytest.raises(mobilenets.ConfigError, match="channel decomposition only"):
        decompose(model, "tucker", target_reduction=2, calibration=images)


def test_decoupled_model_saves_and_loads(tmp_path):
    model = mobilenets.create_model("vgg16", num_classes=10, cifar=True, width_mult=0.25).eval()
    new, _ = decouple(model, target_reduction=1.5)
    path = mobilenets.save_weights(new, tmp_path / "nd.safetensors")
    loaded = mobilenets.load_model(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), new(x))
    assert any(isinstance(m, DecoupledConv) for m in loaded.modules())


def test_torchvision_classifier():
    import torchvision

    model = torchvision.models.alexnet(num_classes=10).eval()
    new, report = decouple(model, target_reduction=1.5, input_size=(3, 96, 96))
    assert report.reduction >= 1.5 and new(torch.randn(1, 3, 96, 96)).shape == (1, 10)


def test_bad_input():
    conv_free = nn.Sequential(nn.Conv2d(4, 8, 1), nn.Conv2d(8, 8, 3, groups=8, padding=1))
    with pytest.raises(mobilenets.ConfigError, match="no regular"):
        decouple(conv_free, rank=2, input_size=(4, 8, 8))
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1))
    with pytest.raises(mobilenets.ConfigError, match="larger than the 9 terms of 0 "):
        decouple(model, rank=10, input_size=(4, 8, 8))
    for energy in (0, 1.5):
        with pytest.raises(mobilenets.ConfigError, match="energy"):
            decouple(model, energy=energy, input_size=(4, 8, 8))
    with pytest.raises(mobilenets.ConfigError, match="exactly one"):
        decouple(model, input_size=(4, 8, 8))
    with pytest.raises(mobilenets.ConfigError, match="cannot be met"):
        decouple(model, target_reduction=50, input_size=(4, 8, 8))
    with pytest.raises(mobilenets.ConfigError, match="order"):
        decouple(model, rank=1, order="sideways", input_size=(4, 8, 8))
    with pytest.raises(mobilenets.ConfigError, match="latency_backend"):
        decouple(model, target_reduction=1.5, budget="latency", latency_backend="tpu", input_size=(4, 8, 8))


def test_cli_decouple_report(capsys, tmp_path, shared_data):
    import json

    from mobilenets.cli import main

    weights = tmp_path / "vgg.safetensors"
    mobilenets.save_weights(mobilenets.create_model("vgg16", num_classes=10, cifar=True, width_mult=0.25), weights)
    code = main(
        ["decouple", "--checkpoint", str(weights), "--target-reduction", "2", "--out", str(tmp_path / "out"),
         "--eval-data", str(shared_data / "cifar10"), "--val-subset", "20"]
    )  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["reduction"] >= 2 and {"accuracy_before", "accuracy_after", "latency_after"} <= set(report["extra"])
    assert mobilenets.load_model(tmp_path / "out" / "model.safetensors") is not None
    assert main(["decouple", "--checkpoint", str(weights), "--energy", "2", "--out", str(tmp_path / "o2")]) == 2


class _Reused(nn.Module):
    """One conv run twice, a ModuleDict, a nested block, a grouped conv and a conv
    registered under two names: what foreign networks do that ours do not."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 12, 3, padding=1)
        self.twice = nn.Conv2d(12, 12, 3, padding=1)
        self.blocks = nn.ModuleDict(
            {
                "wide": nn.Sequential(nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ReLU()),
                "grouped": nn.Conv2d(16, 16, 3, padding=1, groups=4),
            }
        )
        self.shared = nn.Conv2d(16, 16, (3, 1), padding=(1, 0))
        self.alias = self.shared

    def forward(self, x):
        x = torch.relu(self.twice(torch.relu(self.twice(self.stem(x)))))
        x = self.blocks["grouped"](self.blocks["wide"](x))
        return self.alias(torch.relu(self.shared(x)))


@pytest.mark.parametrize("in_channels,size", [(1, None), (5, None), (5, (5, 24, 40))])
def test_foreign_network_sizes_calls_and_names(in_channels, size):
    """Costs are counted at the model's own input (its first conv's channels, or the
    given non-square size), every call of a reused conv counts, a shared conv is
    replaced under both names, grouped convs are left alone and said why, and every
    step is exact at full rank."""
    torch.manual_seed(0)
    model = _Reused(in_channels).eval()
    counted = size or (in_channels, 224, 224)
    new, report = decouple(model, rank="full", replace_all=True, input_size=size)
    assert report.mult_adds_before == mobilenets.profile(model, counted).mult_adds
    assert report.mult_adds_after == mobilenets.profile(new, counted).mult_adds
    calls = {layer.name: layer.calls for layer in report.layers}
    assert calls == {"stem": 1, "twice": 2, "blocks.wide.0": 1, "shared": 2}
    assert "grouped" in report.skipped["blocks.grouped"] and "blocks.grouped" in report.extra["skipped"]
    assert isinstance(new.alias, DecoupledConv) and new.alias is new.shared
    assert isinstance(new.blocks["wide"][0], DecoupledConv) and not isinstance(new.blocks["grouped"], DecoupledConv)
    x = torch.randn(2, *counted[:1], 20, 28) if size is None else torch.randn(2, *size)
    with torch.no_grad():
        assert rel(new(x), model(x)) < 1e-5
    # the twice-run conv's cost is two calls' worth, before and after
    twice = next(layer for layer in report.layers if layer.name == "twice")
    h, w = counted[1:]
    assert twice.mult_adds_before == 2 * 9 * 12 * 12 * h * w
    _, cut = decouple(model, target_reduction=2, input_size=size)
    assert cut.reduction >= 2 and cut.mult_adds_after == mobilenets.profile(_, counted).mult_adds


def test_refinement_fits_every_call_of_a_reused_conv():
    torch.manual_seed(0)
    model = _Reused(3).eval()
    images = torch.randn(16, 3, 16, 16)
    plain, _ = decouple(model, rank=1, input_size=(3, 16, 16))
    refined, report = decouple(model, rank=1, calibration=images)
    assert report.refined and isinstance(refined.twice, DecoupledConv) and refined.twice.pointwise.bias is not None
    held_out = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        assert rel(refined(held_out), model(held_out)) < 0.9 * rel(plain(held_out), model(held_out))


@pytest.mark.parametrize("name", ["vgg11", "resnet18", "alexnet", "mobilenet_v2"])
def test_torchvision_classifiers_are_exact_at_full_rank(name):
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    size = (3, 72, 88)  # non-square, and no input_size needed to run: AlexNet and VGG pool adaptively
    new, report = decouple(model, rank="full", replace_all=True, input_size=size)
    assert report.mult_adds_before == mobilenets.profile(model, size).mult_adds
    x = torch.randn(2, *size)
    with torch.no_grad():
        assert rel(new(x), model(x)) < 1e-5
    if name == "mobilenet_v2":  # the stem is its one regular conv; depthwise and 1x1 convs are skipped
        assert [layer.name for layer in report.layers] == ["features.0.0"]
        assert sum("grouped" in why for why in report.skipped.values()) == 17
    _, default = decouple(model, rank=1, replace_all=True)  # 3 x 224 x 224 from the first conv, nothing given
    assert default.mult_adds_before == mobilenets.profile(model, (3, 224, 224)).mult_adds


def test_detector_backbone():
    torch.manual_seed(0)
    detector = mobilenets.create_model("ssd_mobilenet_v1", num_classes=5).eval()
    backbone = detector.backbone
    new, report = decouple(backbone, rank="full", replace_all=True, input_size=(3, 300, 300))
    assert len(report.layers) >= 4  # the regular stem and the SSD extra layers' 3x3 convs
    x = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        before, after = backbone(x), new(x)
    assert list(before) == list(after) and all(rel(after[k], before[k]) < 1e-5 for k in before)


def test_foreign_network_errors_say_what_to_pass():
    class FixedSize(nn.Module):  # a Linear after flatten: runs on 28 x 28 only
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4 * 26 * 26, 10)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    with pytest.raises(
        mobilenets.ConfigError, match=r"1 x 224 x 224 input \(in_channels=1 from its first conv 'conv'.*pass input_size"
    ):
        decouple(FixedSize(), rank=1)
    _, report = decouple(FixedSize(), rank=1, input_size=(1, 28, 28))
    assert report.layers[0].out_hw == (26, 26)
    with pytest.raises(mobilenets.ConfigError, match="input_size must be"):
        decouple(FixedSize(), rank=1, input_size=(28, 28))
    with pytest.raises(mobilenets.ConfigError, match="wrap it"):
        decouple(nn.Conv2d(3, 8, 3), rank=1)


def _vgg_with_statistics():
    torch.manual_seed(0)
    model = mobilenets.create_model("vgg16", num_classes=10, cifar=True, width_mult=0.25).eval()
    with torch.no_grad():  # pretrained-like BN statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2)
    return model


def test_pipeline_is_exact_at_full_rank_after_every_step():
    model = _vgg_with_statistics()
    x = torch.randn(4, 3, 32, 32)
    pipelines = [["channel"], ["channel", "spatial"], ["channel", "spatial", "decouple"], ["spatial", "decouple"]]
    converted = {}
    for steps in [*pipelines, ["decouple", "channel"], ["tucker", "decouple"]]:
        new, report = decompose(model, steps, rank="full")
        with torch.no_grad():
            assert rel(new(x), model(x)) < 1e-5, steps
        assert report.method == "+".join(steps)
        converted["+".join(steps)] = new
    # the last step really worked on what the earlier ones produced: depthwise k x 1 and 1 x k filters
    new = converted["channel+spatial+decouple"]
    kernels = {m.kernel_size for m in new.modules() if isinstance(m, DecoupledConv)}
    assert kernels == {(3, 1), (1, 3)}


def test_pipeline_shares_the_target_and_refits_to_the_original(shared_data, tmp_path):
    from mobilenets.data import calibration_images

    model = _vgg_with_statistics()
    images = calibration_images(shared_data / "cifar10" / "train", style="cifar", resolution=32, count=48)
    held_out = calibration_images(shared_data / "cifar10" / "test", style="cifar", resolution=32, count=16)
    for target in (2, 4):
        free, free_report = decompose(model, "channel+spatial+decouple", target_reduction=target)
        fitted, report = decompose(
            model, ["channel", "spatial", "decouple"], target_reduction=target, calibration=images
        )
        assert target <= report.reduction < 1.1 * target and target <= free_report.reduction < 1.1 * target
        assert report.mult_adds_after == mobilenets.profile(fitted, (3, 32, 32)).mult_adds
        assert sum(layer.mult_adds_after for layer in report.layers) == report.mult_adds_after - (
            report.mult_adds_before - sum(layer.mult_adds_before for layer in report.layers)
        )  # per-layer costs add up to the network's
        assert report.refined and all(" > " in layer.rank for layer in report.layers)
        with torch.no_grad():
            assert rel(fitted(held_out), model(held_out)) < 0.5 * rel(free(held_out), model(held_out))
    # a refit that gave a 1x1 conv a bias (Tucker's last 1x1 has none here) is replayed when the file is loaded
    fitted, _ = decompose(model, "tucker+spatial", target_reduction=2, calibration=images)
    assert any(step["method"] == "refit" for step in fitted.arch["converted"])
    loaded = mobilenets.load_model(mobilenets.save_weights(fitted, tmp_path / "pipeline.safetensors"))
    with torch.no_grad():
        assert torch.equal(loaded(held_out), fitted(held_out))


def test_pipeline_bad_input():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1))
    for method, match in [
        ("channel+sideways", "must be one of"),
        (["decouple", "decouple"], "once"),
        ("channel+decouple", "target_reduction"),
    ]:
        with pytest.raises(mobilenets.ConfigError, match=match):
            decompose(model, method, input_size=(4, 8, 8))
    with pytest.raises(mobilenets.ConfigError, match="rank='full'"):
        decompose(model, "channel+decouple", rank=3, input_size=(4, 8, 8))
    with pytest.raises(mobilenets.ConfigError, match=r"step \d \(\w+\): .*cannot be met"):
        decompose(model, "spatial+decouple", target_reduction=40, input_size=(4, 8, 8))


def test_cli_pipeline(capsys, tmp_path, shared_data):
    import json

    from mobilenets.cli import main

    weights = tmp_path / "vgg.safetensors"
    mobilenets.save_weights(_vgg_with_statistics(), weights)
    code = main(
        ["decouple", "--checkpoint", str(weights), "--method", "channel+spatial+decouple", "--target-reduction", "3",
         "--calibration", str(shared_data / "cifar10" / "train"), "--calibration-images", "16",
         "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["method"] == "channel+spatial+decouple" and 3 <= report["reduction"] < 3.3 and report["refined"]
    assert "channel+spatial+decouple + least-squares refinement" in capsys.readouterr().out
    assert (
        main(["decouple", "--checkpoint", str(weights), "--method", "channel+sideways", "--rank", "1", "--out", "x"])
        == 2
    )
    assert "argument --method: a conversion step must be one of" in capsys.readouterr().err


def _modeled_ms(module, shape):
    """A deterministic stand-in for a CPU: depthwise mult-adds 6x slower than dense ones,
    plus a fixed cost per conv (latency tests must not time anything)."""
    total = 0.0

    def hook(conv, args, output):
        nonlocal total
        mult_adds = output.shape[-2] * output.shape[-1] * conv.weight[0].numel() * conv.out_channels
        total += (mult_adds * (6 if conv.groups > 1 else 1) + 30_000) / 1e7

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        module(torch.zeros(1, *shape))
    for handle in handles:
        handle.remove()
    return total


def test_latency_target_is_met_on_the_whole_network():
    """Layers timed alone pay costs the network does not (here a fixed 0.1 ms each, as
    ONNX Runtime's reorders and warm caches do): cutting their summed times by the target
    would overshoot it on the network, so the target is met on the whole network's time."""

    def timer(module, shape):  # the whole network is the one module with a Linear
        alone = not any(isinstance(m, nn.Linear) for m in module.modules())
        return _modeled_ms(module, shape) + (0.1 if alone else 0.0)

    model = _vgg_with_statistics()
    fast, report = decouple(model, target_reduction=2, budget="latency", latency_backend=timer)
    network, layers = report.extra["network_latency"], report.extra["layer_latency"]
    speedup = timer(model, (3, 32, 32)) / timer(fast, (3, 32, 32))
    assert network["before_ms"] / network["after_ms"] == pytest.approx(speedup)
    assert 2 <= speedup <= 2 * 1.1
    assert network["target"] == 2 and network["target_met"] is True
    assert "target met" in report.table() and "searched (layer time cut -> network speedup)" in report.table()
    # the summed layer times were cut by less than 2x: cutting them by 2x is what overshot
    assert layers["before_ms"] / layers["after_ms"] < 1.9
    with pytest.raises(mobilenets.ConfigError, match="cannot be met on the whole network"):
        decouple(model, target_reduction=50, budget="latency", latency_backend=timer)

    def layer_table(module, shape):  # e.g. times looked up from a phone's table: layers only
        if any(isinstance(m, nn.Linear) for m in module.modules()):
            raise KeyError("not a layer of the table")
        return timer(module, shape)

    with pytest.warns(UserWarning, match="whole network could not be timed .*KeyError"):
        _, report = decouple(model, target_reduction=1.5, budget="latency", latency_backend=layer_table)
    layers = report.extra["layer_latency"]
    assert layers["after_ms"] <= layers["before_ms"] / 1.5 + 1e-9  # the summed layer times, as before
    assert "summed layer times" in report.extra["network_latency"]["note"]


def test_loss_allocation_is_never_slower_at_the_same_accuracy(shared_data):
    """allocation="loss" under a latency target: the target is met, and on the calibration
    images the network is at least as close to the original as the plain mult-adds
    allocation that runs as fast (the allocation it is meant to replace)."""
    from mobilenets.data import calibration_images
    from mobilenets.decouple.allocate import _output_loss

    model = _vgg_with_statistics()
    with torch.no_grad():
        model.classifier[-1].weight.mul_(30)  # confident logits, so that output KL means something
    images = calibration_images(shared_data / "cifar10" / "train", style="cifar", resolution=32, count=64)
    probe = list(images.split(32))

    def damage(net):
        with torch.no_grad():
            return sum(_output_loss(model(x), net(x)) for x in probe) / len(probe)

    base = _modeled_ms(model, (3, 32, 32))
    r = 2  # one target: each costs ~100 forward passes of the sensitivity measurement
    plain, _ = decouple(model, target_reduction=r, calibration=images)
    same_speed = base / _modeled_ms(plain, (3, 32, 32))
    aware, report = decouple(
        model, target_reduction=same_speed, budget="latency", latency_backend=_modeled_ms,
        allocation="loss", calibration=images,
    )  # fmt: skip
    latency = report.extra["layer_latency"]
    assert latency["after_ms"] <= latency["before_ms"] / same_speed + 1e-9  # the target, on the given timer
    assert _modeled_ms(aware, (3, 32, 32)) <= _modeled_ms(plain, (3, 32, 32)) + 1e-9
    assert damage(aware) <= damage(plain) * (1 + 1e-6)
    assert "output loss" in report.extra["allocation"]
    with pytest.raises(mobilenets.ConfigError, match="calibration"):
        decouple(model, target_reduction=2, allocation="loss")


def test_sweep_converts_with_every_method_scores_each_and_keeps_going_past_a_failure():
    """The library sweep behind ``decouple --sweep``: every method at every target, each converted
    network scored by the caller's function as it finishes, an unreachable target a row with its error."""
    from mobilenets.decouple.sweep import sweep, sweep_methods

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()  # fmt: skip
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        reference = model(x)

    def score(network):
        with torch.no_grad():
            return {"error": ((network(x) - reference).norm() / reference.norm()).item()}

    seen = []
    rows = sweep(model, [2.0, 1e6], (3, 16, 16), score=score, on_result=seen.append)
    names = [name for name, _ in sweep_methods(model, (3, 16, 16))]
    assert [(r.method, r.target) for r in rows] == [(n, t) for n in names for t in (2.0, 1e6)]
    assert seen == rows  # each row reported as it finished
    done = [r for r in rows if r.target == 2.0]
    assert all(r.error is None and r.reduction >= 1.9 for r in done), [(r.method, r.reduction, r.error) for r in done]
    assert all(0 < r.scores["error"] < 1 for r in done)  # converted, not the original and not noise
    failed = [r for r in rows if r.target == 1e6]
    assert failed and all(r.error and r.reduction is None and not r.scores for r in failed)
