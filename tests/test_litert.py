"""LiteRT (the [litert] extra): .tflite files converted by litert-torch, run in LiteRT's interpreter."""

from __future__ import annotations

import json

import pytest
import torch

import mobilenets
from mobilenets.cli import main
from mobilenets.errors import ConfigError
from mobilenets.predict import default_data_info
from mobilenets.runtimes import get_runtime, load_exported

from .conftest import SHARED_DATA, TORCHVISION_V2_WEIGHTS, load_script

pytest.importorskip("ai_edge_litert")
pytest.importorskip("litert_torch")

LITERT = get_runtime("litert")
DISTILL_STEPS = 40  # at 96 px fewer steps barely moved the KL in a scratch check; 40 brings it to 0.44x


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def imagenet_v2():
    """torchvision's ImageNet MobileNetV2 at 96 px (a real network, so int8 has real ranges), with real images."""
    from mobilenets.data import calibration_images

    model = mobilenets.create_model("mobilenet_v2", resolution=96, weights=TORCHVISION_V2_WEIGHTS).eval()
    images = calibration_images(SHARED_DATA / "imagenet-sample", style="imagenet", resolution=96, count=24)
    return model, default_data_info(model), images


def test_fp32_file_reproduces_pytorch_and_predict_reads_it(imagenet_v2, tmp_path, capsys):
    model, info, images = imagenet_v2
    path = tmp_path / "m.tflite"
    written = LITERT.export(model, path, info=info, check_input=images[:1])
    assert written["max_relative_error"] < 1e-4 and (tmp_path / "m.tflite.json").is_file()
    network = load_exported(path)
    assert rel(network(images[:4]), model(images[:4]).detach()) < 1e-4
    tench = SHARED_DATA / "imagenet-sample" / "n01440764" / "n01440764_tench.jpg"
    assert main(["predict", "--exported", str(path), str(tench), "--json", "--top", "1"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top"][0][0] == "tench"


@pytest.fixture(scope="module")
def int8_file(imagenet_v2, tmp_path_factory):
    model, info, images = imagenet_v2
    path = tmp_path_factory.mktemp("int8") / "q.tflite"
    LITERT.export(model, str(path), info=info, precision="int8", calibration=images[:16])  # a str path
    return path


def test_int8_file_stays_close_to_fp32_on_real_images(imagenet_v2, int8_file):
    """PT2E int8 (litert-torch's quantizer, ranges cut at the 99.99th percentile): on images it was
    not calibrated on, the int8 file's logits stay within the export check's bound and mostly agree
    with fp32's top-1; the file records how its ranges were set."""
    model, info, images = imagenet_v2
    network = load_exported(int8_file)
    assert (network.info["precision"], network.info["calibration"]) == ("int8", "percentile 99.99")
    held_out = images[16:]
    ours, theirs = network(held_out), model(held_out).detach()
    assert rel(ours, theirs) < 0.3
    assert (ours.argmax(1) == theirs.argmax(1)).float().mean() >= 0.75


def test_distilled_int8_moves_toward_fp32_and_is_recorded(imagenet_v2, tmp_path):
    """--distill-steps: the int8 network's weights fitted to fp32's outputs on the calibration images
    bring its simulated KL to fp32 on them down, leave the float model untouched (torch.export shares
    parameters with what it captures), and the file records the fit; fp32 refuses the option."""
    model, info, images = imagenet_v2
    before = {name: value.clone() for name, value in model.state_dict().items()}
    path = tmp_path / "d.tflite"
    LITERT.export(model, path, info=info, precision="int8", calibration=images[:16], distill_steps=DISTILL_STEPS)
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    network = load_exported(path)
    assert network.info["distill_steps"] == DISTILL_STEPS
    assert network.info["kl_after"] < 0.6 * network.info["kl_before"]
    held_out = images[16:]
    assert rel(network(held_out), model(held_out).detach()) < 0.3
    with pytest.raises(ConfigError, match="distill_steps must be an integer >= 0, got -1"):
        LITERT.export(
            model, tmp_path / "n.tflite", info=info, precision="int8", calibration=images[:2], distill_steps=-1
        )
    with pytest.raises(ConfigError, match="needs precision int8"):
        LITERT.export(model, tmp_path / "f.tflite", info=info, distill_steps=2)


def test_kernel_sets_run_one_int8_file_alike(imagenet_v2, int8_file):
    """benchmarks/litert_kernels.py: the file in LiteRT's reference and builtin kernels gives XNNPACK's
    logits up to int8 rounding (which the depthwise layers amplify: 0.095 relative at 96 px on Zen 4, within
    the int8-against-fp32 bound), and its op-by-op walk keeps every op's output, the last one the logits."""
    import numpy as np

    kernels = load_script("litert_kernels")
    held_out = imagenet_v2[2][16:20]
    xnnpack = load_exported(int8_file)
    theirs = xnnpack(held_out)
    found = {name: kernels.network(int8_file, name)(held_out) for name in ("reference", "builtin")}
    assert all(rel(logits, theirs) < 0.3 for logits in found.values())
    tensors, ops = kernels.every_tensor(int8_file, "reference", held_out[:2])
    assert len(ops) > 60 and all(index in tensors for op in ops for index in op["outputs"])
    output = xnnpack.outputs[0]
    scale, zero = output["quantization"]
    # Compared on the int8 grid: the walk keeps the integers, the network dequantizes them in float32 (a
    # float64 product differed by half a float32 step at logit 36.5 on an Intel Xeon, failing atol 1e-6).
    walked = tensors[output["index"]][:, 0]  # (images, 1, classes) as the walk keeps them
    np.testing.assert_array_equal(walked, np.round(found["reference"][:2].numpy() / scale) + zero)


def test_bad_input_is_one_line(imagenet_v2, tmp_path, capsys):
    model, info, images = imagenet_v2
    with pytest.raises(ConfigError, match="LiteRT writes .tflite files"):
        LITERT.export(model, tmp_path / "m.lite", info=info)
    with pytest.raises(ConfigError, match="needs calibration images"):
        LITERT.export(model, tmp_path / "m.tflite", info=info, precision="int8")
    with pytest.raises(ConfigError, match="runs fp32, int8, not bf16"):
        LITERT.export(model, tmp_path / "m.tflite", info=info, precision="bf16")
    with pytest.raises(ConfigError, match="PT2E int8 ranges are one of percentile, histogram, minmax, got 'entropy'"):
        LITERT.export(model, tmp_path / "m.tflite", info=info, precision="int8", calibration=images[:2],
                      calibration_method="entropy")  # fmt: skip
    (tmp_path / "c.tflite").write_bytes(b"not a flatbuffer")
    assert main(["predict", "--exported", str(tmp_path / "c.tflite"), "x.jpg"]) == 2
    assert "c.tflite.json is missing" in capsys.readouterr().err
    (tmp_path / "c.tflite.json").write_text(json.dumps({"resolution": 96, "transforms": "imagenet"}))
    assert main(["predict", "--exported", str(tmp_path / "c.tflite"), "x.jpg"]) == 2
    assert "is not a loadable LiteRT model" in capsys.readouterr().err
