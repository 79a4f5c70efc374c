"""Quantization-aware training: the PyTorch model computes what ONNX Runtime's int8 graph computes,
it trains through the normal pipeline, and its checkpoint exports to int8 without calibration."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch

import mobilenets
from mobilenets.classification.evaluate import evaluate
from mobilenets.cli import main
from mobilenets.data import build_datasets, make_loader
from mobilenets.errors import ConfigError
from mobilenets.export import OnnxClassifier, ptq
from mobilenets.export.ort import ort_session
from mobilenets.export.qat import ActivationQuantizer, activation_quantizers, export_int8, prepare_qat
from mobilenets.train import train

from .test_export import with_batch_statistics
from .test_train import config

INFO = {"resolution": 64, "transforms": "imagenet", "classes": [str(i) for i in range(10)]}


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def small_qat(tmp_path_factory):
    """A small MobileNetV2 with real batch statistics, prepared for QAT and exported to int8 from it."""
    torch.manual_seed(0)
    model = mobilenets.create_model("mobilenet_v2", width_mult=0.5, num_classes=10, resolution=64)
    model = with_batch_statistics(model, _images(64, 0))
    with torch.no_grad():  # logits as spread as a trained classifier's
        model.classifier[-1].weight.mul_(20)
    qat_model = prepare_qat(model, _images(32, 1)).eval()
    tmp = tmp_path_factory.mktemp("qat")
    export_int8(qat_model, tmp / "int8.onnx", info=INFO, probe=_images(2, 2))
    return model, qat_model, tmp / "int8.onnx"


def _run(path, images: torch.Tensor, outputs: list[str] | None = None):
    graph = onnx.load(str(path))
    for name in outputs or []:
        graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort_session(graph.SerializeToString())
    runs = [session.run(None, {"image": images[i : i + 1].numpy()}) for i in range(len(images))]
    return [np.concatenate(values) for values in zip(*runs)]


def test_activation_quantizer_rounds_as_onnx_runtime_does():
    """Against torch's reference fake-quantize with ONNX Runtime's step and zero point for the same
    range (step = (high - low) / 255, zero = round(-low / step)); gradients pass inside the range only."""
    x = torch.linspace(-3, 5, 1001, requires_grad=True)
    quantizer = ActivationQuantizer(-1.3, 2.9, signed=True)
    step = (2.9 + 1.3) / 255
    zero = int(np.round(1.3 / step))
    expected = torch.fake_quantize_per_tensor_affine(x.detach(), step, zero, 0, 255)
    assert torch.allclose(quantizer(x), expected, atol=1e-6)
    quantizer(x).sum().backward()
    inside = (x.detach() > -1.3 + step) & (x.detach() < 2.9 - step)
    assert torch.all(x.grad[inside] == 1) and torch.all(x.grad[(x.detach() < -1.4) | (x.detach() > 3.0)] == 0)
    assert quantizer.high.grad is not None and quantizer.high.grad != 0 and quantizer.low.grad != 0
    # A range learned past a ReLU6's clip is capped: ONNX Runtime drops the clip and the range does it.
    assert ActivationQuantizer(0, 7.5, signed=False, ceiling=6.0).range() == (0.0, 6.0)


def test_qat_model_rounds_each_layer_as_onnx_runtime_does(small_qat):
    """Layer by layer, from the same int8 input, the QAT model's uint8 tensor equals ONNX Runtime's.

    Each quantized tensor of the int8 graph is read back (its DequantizeLinear output) and the
    PyTorch layer that computes it is run on ONNX Runtime's own int8 input: weights, int32 biases
    and activation steps must all agree for the result to land on the same integers.  Float
    accumulation order still splits exact rounding ties differently, so a few in 10^4 may differ
    by one step; without the int32 bias rounding, 0.06% of the first layer's values did.
    """
    _, qat_model, int8_path = small_qat
    graph = onnx.load(str(int8_path))
    producers, consumers = ptq._wiring(graph)
    dequantized = {}
    for node in graph.graph.node:
        if node.op_type == "QuantizeLinear":
            dq = [c for c in consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"]
            if dq:
                dequantized[node.input[0]] = dq[0].output[0]
    names = {
        "features.0.act": "/features/features.0/act/Clip_output_0",
        "features.1.depthwise.act": "/features/features.1/depthwise/act/Clip_output_0",
        "features.1.project.conv": "/features/features.1/project/conv/Conv_output_0",
        "features.2.expand.act": "/features/features.2/expand/act/Clip_output_0",
    }
    images = _images(4, 3)
    values = dict(zip(names, _run(int8_path, images, [dequantized[n] for n in names.values()])[1:]))
    modules = dict(qat_model.named_modules())
    with torch.no_grad():
        qat_model(images)  # hands each layer its input step
        layers = {
            "features.0.act": lambda: modules["features.0.act"](
                modules["features.0.conv"](qat_model.input_quantizer(images))
            ),
            "features.1.depthwise.act": lambda: modules["features.1.depthwise.act"](
                modules["features.1.depthwise.conv"](torch.from_numpy(values["features.0.act"]))
            ),
            "features.1.project.conv": lambda: modules["features.1.project.conv"](
                torch.from_numpy(values["features.1.depthwise.act"])
            ),
            "features.2.expand.act": lambda: modules["features.2.expand.act"](
                modules["features.2.expand.conv"](torch.from_numpy(values["features.1.project.conv"]))
            ),
        }
        for name, layer in layers.items():
            ours = layer().numpy()  # the module's output hook applies its quantizer
            step = modules[name].output_quantizer.step().item()
            differ = np.abs(ours - values[name]) > step / 2
            assert differ.mean() <= 2e-4, (name, differ.mean())
            assert np.abs(ours - values[name]).max() <= step * 1.01, name


def test_qat_model_is_closer_to_its_int8_export_than_the_float_model_is(small_qat):
    """End to end the rounding ties spread, but the QAT model still predicts the int8 file
    far better than the float model it came from (random weights and images: int8 is far
    from fp32 here, which is what makes the comparison sharp)."""
    model, qat_model, int8_path = small_qat
    images = _images(64, 4)
    (int8,) = _run(int8_path, images)
    with torch.no_grad():
        simulated, fp32 = qat_model(images).numpy(), model(images).numpy()
    sim_error, fp32_error = np.abs(simulated - int8).mean(), np.abs(fp32 - int8).mean()
    assert sim_error < 0.25 * fp32_error, (sim_error, fp32_error)  # measured 0.12 against 1.46
    agree, fp32_agree = (simulated.argmax(1) == int8.argmax(1)).mean(), (fp32.argmax(1) == int8.argmax(1)).mean()
    assert agree >= 0.9 and agree > fp32_agree + 0.3, (agree, fp32_agree)  # measured 0.94 against 0.44


def test_qat_structure_survives_copies_and_checkpoints(small_qat, tmp_path):
    """A deep copy (EMA) uses its own quantizers; saved weights reload into the same function."""
    _, qat_model, _ = small_qat
    images = _images(4, 5)
    twin = copy.deepcopy(qat_model)
    with torch.no_grad():
        activation_quantizers(twin)[3].high.mul_(0.5)
        assert not torch.equal(twin(images), qat_model(images))
    path = mobilenets.save_weights(qat_model, tmp_path / "qat.safetensors", data_info=INFO)
    loaded = mobilenets.load_model(path)
    with torch.no_grad():
        assert torch.equal(loaded(images), qat_model(images))
    with pytest.raises(ValueError, match="already prepared"):
        prepare_qat(qat_model, images)


def _config(shared_data, out, **changes):
    settings = dict(recipe="cifar10-quick", train_subset=100, val_subset=100, batch_size=50, epochs=1)
    return config(shared_data, out, **{**settings, **changes})


def test_qat_through_the_training_pipeline_then_int8_export(shared_data, tmp_path, capsys):
    """Train, fine-tune quantization-aware from that run (interrupted and resumed exactly, the
    resumed run rebuilding its structure from the checkpoint instead of calibrating again), export
    int8 with the learned ranges and no calibration images; ONNX Runtime's int8 accuracy on the
    validation images is the QAT model's."""
    quiet = dict(progress=False, log=lambda *_: None)
    train(_config(shared_data, tmp_path / "float"), **quiet)
    qat = dict(recipe="cifar10-qat", init_from=str(tmp_path / "float" / "best.pt"), qat=True, qat_calibration=64)
    with pytest.raises(ConfigError, match="--init-from"):
        train(_config(shared_data, tmp_path / "nope", recipe="cifar10-qat", qat=True), **quiet)
    straight = train(_config(shared_data, tmp_path / "qat", epochs=2, **qat), **quiet)
    train(_config(shared_data, tmp_path / "qat2", epochs=2, **qat), stop_after_steps=3, **quiet)
    said: list[str] = []
    resumed = train(_config(shared_data, tmp_path / "qat2", epochs=2, **qat), progress=False, log=said.append)
    assert not any("int8 ranges from" in line for line in said)  # rebuilt from last.pt, not calibrated again
    a = torch.load(tmp_path / "qat" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "qat2" / "last.pt", weights_only=True)["model"]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert straight["top1"] == resumed["top1"]
    start = torch.load(tmp_path / "qat" / "best.pt", weights_only=True)["arch"]["qat"]["activations"]
    outputs = [p for p in start if p["at"] == "output"]
    assert len(outputs) > 40
    # The ranges are trained (they are parameters the optimizer steps), not fixed at calibration.
    assert any(a[f"{p['module']}.output_quantizer.high"].item() != p["high"] for p in outputs)

    out = tmp_path / "qat.onnx"
    checkpoint = tmp_path / "qat" / "last.pt"
    main(["export", "--checkpoint", str(checkpoint), "--int8", "--out", str(out)])
    assert "learned ranges" in capsys.readouterr().out
    cifar = str(shared_data / "cifar10")
    main(["eval", "--checkpoint", str(checkpoint), "--data-dir", cifar, "--val-subset", "100", "--json"])
    simulated = json.loads(capsys.readouterr().out)["top1"]
    _, val_set, classes = build_datasets(shared_data / "cifar10", style="cifar", resolution=32, val_subset=100)
    int8 = evaluate(OnnxClassifier(out), make_loader(val_set, 50, workers=0), len(classes))["top1"]
    assert abs(int8 - simulated) <= 0.03, (int8, simulated)
    assert mobilenets.export.read_metadata(out)["precision"] == "int8"


def test_qat_simulates_mobilenet_v3_hard_swish_gates(tmp_path):
    """ONNX exports hard-swish as HardSigmoid then Mul and ONNX Runtime quantizes the gate between
    them, a tensor no PyTorch module returns: the QAT model rounds it too, and stays close to the file."""
    model = mobilenets.create_model("mobilenet_v3_small", num_classes=10, resolution=64)
    model = with_batch_statistics(model, _images(64, 0))
    with torch.no_grad():
        model.classifier[-1].weight.mul_(20)
    qat_model = prepare_qat(model, _images(16, 1)).eval()
    kinds = [p["at"] for p in qat_model.arch["qat"]["activations"]]
    assert kinds.count("hardswish_gate") >= 10
    export_int8(qat_model, tmp_path / "int8.onnx", info=INFO, probe=_images(2, 2))
    images = _images(16, 4)
    (int8,) = _run(tmp_path / "int8.onnx", images)
    with torch.no_grad():
        simulated, fp32 = qat_model(images).numpy(), model(images).numpy()
    assert np.abs(simulated - int8).mean() < 0.25 * np.abs(fp32 - int8).mean()
