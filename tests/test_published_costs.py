"""Every published cost figure, reproduced by counting the layers we build.

Each test names the table it checks.  Where the count and a printed number
differ by more than the printing's rounding, the test states the convention
that explains the difference and asserts the explained number exactly.
"""

from __future__ import annotations

import pytest
import torchvision
from torch import nn

from mobilenets import create_model, profile
from mobilenets.cost import conv_cost, depthwise_separable_cost, depthwise_separable_reduction
from mobilenets.layers import DepthwiseSeparable

M = 1_000_000


def close_to_printed(value: float, printed: float, decimals: int) -> bool:
    """Equal at the printed precision, or within 1 % of the printed number."""
    return round(value, decimals) == printed or abs(value - printed) <= 0.01 * printed


def params_without_bn(model: nn.Module) -> int:
    bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    return sum(p.numel() for p in model.parameters()) - bn


# ---------------------------------------------------------------- MobileNetV1
@pytest.mark.parametrize(
    "width, resolution, mult_adds_m, params_m",
    [
        # Table 6: width multiplier at 224
        (1.0, 224, 569, 4.2),
        (0.75, 224, 325, 2.6),
        (0.5, 224, 149, 1.3),
        (0.25, 224, 41, 0.5),
        # Table 7: resolution multiplier at width 1.0
        (1.0, 192, 418, 4.2),
        (1.0, 160, 290, 4.2),
        (1.0, 128, 186, 4.2),
        # Table 9: 0.50 MobileNet-160
        (0.5, 160, 76, 1.32),
    ],
)
def test_mobilenet_v1_tables_6_7_9(width, resolution, mult_adds_m, params_m):
    model = create_model("mobilenet_v1", width_mult=width)
    cost = profile(model, (3, resolution, resolution))
    assert close_to_printed(cost.mult_adds / M, mult_adds_m, 0)
    if params_m == 1.32:
        # Table 9 prints two decimals: 1,320,648 without batch norm (1.33M with it).
        assert round(params_without_bn(model) / M, 2) == params_m
    else:
        assert round(cost.params / M, 1) == params_m


def test_mobilenet_v1_exact_counts():
    # Derived by hand from Table 1: 3,185,088 conv weights + 1,025,000 FC weights
    # and biases + 21,888 batch-norm scales and shifts.
    cost = profile(create_model("mobilenet_v1"), (3, 224, 224))
    assert cost.params == 3_185_088 + 1_025_000 + 21_888
    assert cost.mult_adds == 568_740_352


def test_mobilenet_v1_table_4_full_convolution_twin():
    cost = profile(create_model("mobilenet_v1_conv"), (3, 224, 224))
    assert close_to_printed(cost.mult_adds / M, 4866, 0)  # 4867.3M: 0.03 % from the print
    assert round(cost.params / M, 1) == 29.3
    v1 = profile(create_model("mobilenet_v1"), (3, 224, 224))
    assert 8 < cost.mult_adds / v1.mult_adds < 9  # "8 to 9 times less computation"


def test_mobilenet_v1_table_2_share_by_layer_type():
    shares = {r["kind"]: r for r in profile(create_model("mobilenet_v1"), (3, 224, 224)).by_type()}
    # Mult-adds.  The paper prints 1.19 % for the 3x3 full conv, but its four
    # shares then sum to 99.29 %; with the digits swapped (1.91 %) they sum to
    # 100.01 %, and the stem's 10,838,016 mult-adds are 1.91 % of the total.
    assert round(100 * shares["1x1 conv"]["mult_adds_share"], 2) == 94.86
    assert round(100 * shares["depthwise conv"]["mult_adds_share"], 2) == 3.06
    assert round(100 * shares["full conv"]["mult_adds_share"], 2) == 1.91
    assert round(100 * shares["fully connected"]["mult_adds_share"], 2) == 0.18
    # Parameters: the paper's shares are of conv and FC kernels (no biases, no BN).
    assert round(100 * shares["1x1 conv"]["weight_share"], 2) == 74.59
    assert round(100 * shares["depthwise conv"]["weight_share"], 2) == 1.06
    assert round(100 * shares["full conv"]["weight_share"], 2) == 0.02
    assert round(100 * shares["fully connected"]["weight_share"], 2) == 24.33


def test_mobilenet_v1_table_3_single_layer_formulas():
    # A 14x14x512 input, 3x3x512x512 kernel.
    standard = conv_cost(3, 512, 512, 14)
    separable = depthwise_separable_cost(3, 512, 512, 14)
    assert round(standard.mult_adds / M) == 462 and round(standard.weights / M, 2) == 2.36
    assert round(separable.mult_adds / M, 1) == 52.3 and round(separable.weights / M, 2) == 0.27
    narrow = depthwise_separable_cost(3, 384, 384, 14)  # alpha = 0.75
    assert round(narrow.mult_adds / M, 1) == 29.6 and round(narrow.weights / M, 2) == 0.15
    low_res = depthwise_separable_cost(3, 384, 384, 10)  # rho = 0.714: 14 -> 10
    assert round(low_res.mult_adds / M, 1) == 15.1 and round(low_res.weights / M, 2) == 0.15


@pytest.mark.parametrize("kernel, m, n, size, stride", [(3, 32, 64, 56, 1), (3, 64, 128, 28, 2), (5, 24, 40, 14, 1)])
def test_depthwise_separable_formula_matches_counted_layer(kernel, m, n, size, stride):
    block = DepthwiseSeparable(m, n, stride=stride, kernel_size=kernel)
    cost = profile(block, (m, size * stride, size * stride))
    formula = depthwise_separable_cost(kernel, m, n, size)
    assert cost.mult_adds == formula.mult_adds
    weights = sum(r.weight_params for r in cost.layers)
    assert weights == formula.weights
    full = conv_cost(kernel, m, n, size)
    assert cost.mult_adds / full.mult_adds == pytest.approx(depthwise_separable_reduction(kernel, n))


# ---------------------------------------------------------------- MobileNetV2
def test_mobilenet_v2_paper_figures():
    model = create_model("mobilenet_v2")
    cost = profile(model, (3, 224, 224))
    assert close_to_printed(cost.mult_adds / M, 300, 0)
    # Parameters: 3,504,872 with batch norm, as torchvision's model card lists.
    # The paper's "3.4M" is the count without batch norm (3,470,760), truncated.
    assert cost.params == 3_504_872
    assert params_without_bn(model) == 3_470_760


def test_mobilenet_v2_1_4():
    # The paper prints 585M / 6.9M for width 1.4, which does not follow from its
    # own table; the authors' released checkpoint (TF-slim README) lists 582M /
    # 6.06M, which is what the table gives (params without batch norm).
    model = create_model("mobilenet_v2", width_mult=1.4)
    cost = profile(model, (3, 224, 224))
    assert round(cost.mult_adds / M) == 582
    assert round(params_without_bn(model) / M, 2) == 6.06
    assert abs(cost.mult_adds / M - 585) / 585 < 0.01


# The authors' grid of released MobileNetV2 checkpoints (tensorflow/models,
# research/slim/nets/mobilenet/README.md): width, resolution -> MACs (M), params (M,
# counted without batch norm, 1001 classes there vs 1000 here: 1,281 params, below
# the printed precision).
V2_RELEASED = {
    (1.4, 224): (582, 6.06), (1.3, 224): (509, 5.34),
    (1.0, 224): (300, 3.47), (1.0, 192): (221, 3.47), (1.0, 160): (154, 3.47), (1.0, 128): (99, 3.47), (1.0, 96): (56, 3.47),
    (0.75, 224): (209, 2.61), (0.75, 192): (153, 2.61), (0.75, 160): (107, 2.61), (0.75, 128): (69, 2.61), (0.75, 96): (39, 2.61),
    (0.5, 224): (97, 1.95), (0.5, 192): (71, 1.95), (0.5, 160): (50, 1.95), (0.5, 128): (32, 1.95), (0.5, 96): (18, 1.95),
    (0.35, 224): (59, 1.66), (0.35, 192): (43, 1.66), (0.35, 160): (30, 1.66), (0.35, 128): (20, 1.66), (0.35, 96): (11, 1.66),
}  # fmt: skip


@pytest.mark.parametrize("width, resolution", sorted(V2_RELEASED))
def test_mobilenet_v2_width_resolution_grid(width, resolution):
    mult_adds_m, params_m = V2_RELEASED[(width, resolution)]
    model = create_model("mobilenet_v2", width_mult=width)
    cost = profile(model, (3, resolution, resolution))
    # Printed as whole millions; the count must round to the print (+-1 for the
    # smallest models, where the release table truncates rather than rounds).
    assert abs(cost.mult_adds / M - mult_adds_m) <= max(1, 0.01 * mult_adds_m)
    assert round(params_without_bn(model) / M, 2) == params_m


# ---------------------------------------------------------------- MobileNetV3
def test_mobilenet_v3_large():
    model = create_model("mobilenet_v3_large")
    cost = profile(model, (3, 224, 224))
    # 216.6M: the authors' released checkpoint lists 217M (TF-slim README); the
    # paper prints 219M, 1.1 % higher.  Params 5,483,032 = torchvision's model
    # card; the paper's 5.4M is the count without batch norm (5,458,632), truncated.
    assert round(cost.mult_adds / M) == 217
    assert abs(cost.mult_adds / M - 219) / 219 < 0.012
    assert cost.params == 5_483_032
    assert params_without_bn(model) == 5_458_632


def test_mobilenet_v3_small():
    model = create_model("mobilenet_v3_small")
    cost = profile(model, (3, 224, 224))
    assert close_to_printed(cost.mult_adds / M, 56, 0)
    assert cost.params == 2_542_856  # torchvision's model card
    assert round(cost.params / M, 1) == 2.5


def test_mobilenet_v3_width_0_75():
    # The published 0.75 models keep each expansion ratio and the 1280/1024 head.
    large = profile(create_model("mobilenet_v3_large", width_mult=0.75), (3, 224, 224))
    assert round(large.mult_adds / M) == 155 and round(large.params / M, 1) == 4.0
    small = profile(create_model("mobilenet_v3_small", width_mult=0.75), (3, 224, 224))
    assert round(small.params / M, 1) == 2.0
    # 43.4M against a printed 44M (1.4 %): the one published figure we do not hit
    # to 1 %; no convention we tried (SE on the last conv, unscaled stem) closes it.
    assert abs(small.mult_adds / M - 44) / 44 < 0.015


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"])
def test_profile_counts_torchvision_models_identically(name):
    ours = profile(create_model(name), (3, 224, 224))
    theirs = profile(getattr(torchvision.models, name)(), (3, 224, 224))
    assert (ours.mult_adds, ours.params) == (theirs.mult_adds, theirs.params)
    assert ours.largest_activation_blockwise == theirs.largest_activation_blockwise


# ---------------------------------------------------------- activation memory
def test_v2_table_3_largest_materialised_tensor():
    # V2 paper Table 3, 16-bit activations: MobileNetV1 needs 1600K, MobileNetV2
    # 400K when each bottleneck block is one operation.
    v1 = profile(create_model("mobilenet_v1"), (3, 224, 224))
    v2 = profile(create_model("mobilenet_v2"), (3, 224, 224))
    assert v1.largest_activation_blockwise == 112 * 112 * 64
    assert v2.largest_activation_blockwise == 112 * 112 * 16
    assert abs(v1.memory_kb(v1.largest_activation_blockwise) - 1600) / 1600 < 0.01
    assert abs(v2.memory_kb(v2.largest_activation_blockwise) - 400) / 400 < 0.01
    # V1's channel column of the table, resolution by resolution.
    assert {k: v for k, v in v1.by_resolution_channels.items() if k != 224} == {
        112: 64,
        56: 128,
        28: 256,
        14: 512,
        7: 1024,
        1: 1024,
    }
    # Without treating blocks as one op, V2's largest tensor is the 96x112x112 expansion.
    assert v2.largest_activation == 96 * 112 * 112


def test_naive_peak_counts_live_tensors():
    # input (3x8x8) + conv1 output (4x8x8, ReLU in place) + conv2 output (2x8x8) in fp32
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 3, padding=1))
    cost = profile(model, (3, 8, 8))
    assert cost.peak_activation_naive_bytes == (3 + 4 + 2) * 64 * 4
    assert cost.mult_adds == 64 * 4 * 27 + 64 * 2 * 36
    assert cost.params == 4 * 27 + 4 + 2 * 36 + 2
