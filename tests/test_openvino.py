"""OpenVINO (the [openvino] extra): export to its IR at fp32, bf16 and int8, checked against
PyTorch, then predict, eval and bench through the runtime registry."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import mobilenets
from mobilenets.cli import main
from mobilenets.errors import ConfigError
from mobilenets.predict import default_data_info
from mobilenets.runtimes import get_runtime, load_exported, runtime_for_file

from .conftest import SHARED_DATA
from .test_export import trained_like

pytest.importorskip("openvino")

OPENVINO = get_runtime("openvino")
CLASSES = sorted(p.name for p in (SHARED_DATA / "cifar10" / "test").iterdir() if p.is_dir())


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A trained-like 10-class MobileNetV2 (CIFAR preprocessing, 64 px) saved with its class names."""
    torch.manual_seed(0)
    model = trained_like(mobilenets.create_model("mobilenet_v2", width_mult=0.35, resolution=64, num_classes=10))
    info = {**default_data_info(model), "classes": CLASSES, "transforms": "cifar"}
    return mobilenets.save_weights(model, tmp_path_factory.mktemp("ov") / "m.safetensors", data_info=info), model


def test_cli_export_predict_and_eval_match_pytorch(checkpoint, tmp_path, capsys):
    """'export --out m.xml' (the suffix names --format openvino) writes an IR whose outputs are PyTorch's
    (1e-4 relative), with the classes and preprocessing in its metadata; 'predict --exported' and
    'eval --exported' pick OpenVINO from the file and give what the checkpoint gives."""
    path, model = checkpoint
    out = tmp_path / "m.xml"
    assert main(["export", "--checkpoint", str(path), "--out", str(out)]) == 0
    assert "OpenVINO vs PyTorch relative error" in capsys.readouterr().out
    assert out.with_suffix(".bin").is_file() and runtime_for_file(out) is OPENVINO
    network = load_exported(out)
    assert network.info["classes"] == CLASSES and network.info["transforms"] == "cifar"
    x = torch.rand(3, 3, 64, 64)
    assert rel(network(x), model.eval()(x)) < 1e-4
    images = sorted((SHARED_DATA / "cifar10" / "test" / "cat").iterdir())[:2]
    results = {}
    for source in (["--exported", str(out)], ["--checkpoint", str(path)]):
        assert main(["predict", *source, "--json", *map(str, images)]) == 0
        results[source[0]] = json.loads(capsys.readouterr().out)
    for a, b in zip(results["--exported"], results["--checkpoint"]):
        assert [name for name, _ in a["top"]] == [name for name, _ in b["top"]]
        assert [p for _, p in a["top"]] == pytest.approx([p for _, p in b["top"]], abs=1e-4)
    data = SHARED_DATA / "cifar10" / "test"
    for source in (["--exported", str(out)], ["--checkpoint", str(path)]):
        assert main(["eval", *source, "--data-dir", str(data), "--val-subset", "40", "--workers", "0", "--json"]) == 0
        results[source[0]] = json.loads(capsys.readouterr().out)
    assert results["--exported"]["top1"] == pytest.approx(results["--checkpoint"]["top1"], abs=1 / 40)


def test_bf16_runs_where_the_cpu_has_it_and_is_refused_in_one_line_where_not(checkpoint, tmp_path, monkeypatch):
    path, model = checkpoint
    info = default_data_info(model, {"classes": CLASSES})
    if OPENVINO.precision_problem("bf16") is None:
        written = OPENVINO.export(model, tmp_path / "b.xml", info=info, precision="bf16")
        assert written["precision"] == "bf16" and written["max_relative_error"] < 0.1
        x = torch.rand(2, 3, 64, 64)
        assert rel(load_exported(tmp_path / "b.xml")(x), model.eval()(x)) < 0.1
    import openvino

    real = openvino.Core.get_property
    monkeypatch.setattr(openvino.Core, "get_property", lambda self, device, key: ["FP32", "INT8"]
                        if key == "OPTIMIZATION_CAPABILITIES" else real(self, device, key))  # fmt: skip
    with pytest.raises(ConfigError, match="bf16 needs a CPU with AVX-512 BF16 or AMX"):
        OPENVINO.export(model, tmp_path / "c.xml", info=info, precision="bf16")
    assert not (tmp_path / "c.xml").exists()


def test_int8_from_our_calibrated_qdq_model_stays_close_to_fp32(checkpoint, tmp_path, capsys):
    """int8: our calibrated QDQ ONNX model converted to IR, made as the ONNX int8 options say (the
    file records how); on real images its logits stay within the export check's bound of PyTorch's
    fp32 ones.  From the command line the same options reach it; LiteRT's exporter refuses them."""
    pytest.importorskip("onnxruntime")
    from mobilenets.data import calibration_images
    from mobilenets.export.quantize import QuantizeOptions

    path, model = checkpoint
    info = default_data_info(model, {"classes": CLASSES, "transforms": "cifar"})
    images = calibration_images(SHARED_DATA / "cifar10" / "test", style="cifar", resolution=64, count=24)
    options = QuantizeOptions(weight_rounding="nearest", range_search=False)
    OPENVINO.export(model, tmp_path / "q.xml", info=info, precision="int8", calibration=images[:16], quantize=options)
    network = load_exported(tmp_path / "q.xml")
    assert network.info["precision"] == "int8"
    assert (network.info["weight_rounding"], network.info["range_search"]) == ("nearest", False)
    assert rel(network(images[16:]), model.eval()(images[16:])) < 0.3
    argv = ["export", "--checkpoint", str(path), "--int8", "--calibration", str(SHARED_DATA / "cifar10" / "test"),
            "--calibration-images", "8", "--calibration-method", "minmax", "--no-range-search"]  # fmt: skip
    assert main([*argv, "--format", "openvino", "--out", str(tmp_path / "c.xml")]) == 0
    recorded = load_exported(tmp_path / "c.xml").info
    assert (recorded["calibration"], recorded["range_search"]) == ("minmax", False)
    if importlib.util.find_spec("litert_torch"):
        assert main([*argv, "--format", "litert", "--out", str(tmp_path / "c.tflite")]) == 2
        assert "--range-search does not apply to --format litert" in capsys.readouterr().err


def test_detector_and_segmenter_exports_give_pytorchs_outputs(tmp_path):
    """A detector's IR holds its network and box decoding: PyTorch's boxes and class scores for
    every default box (a trained detector's detections after NMS: tests/test_detection.py); a
    segmenter's gives its class scores at the input's size."""
    from mobilenets.export.detection import DecodedDetector

    torch.manual_seed(0)
    detector = mobilenets.create_model("ssdlite_mobilenet_v2", num_classes=3, width_mult=0.5, resolution=128).eval()
    info = default_data_info(detector, {"classes": ["__background__", "a", "b"]})
    OPENVINO.export(detector, tmp_path / "d.xml", info=info)
    exported = load_exported(tmp_path / "d.xml")
    x = torch.rand(1, 3, 128, 128)
    for theirs, ours in zip(exported.decoded(x), DecodedDetector(detector, 128).eval()(x)):
        assert rel(theirs, ours.detach()) < 1e-4
    found = exported([torch.rand(3, 100, 150)])[0]
    assert set(found) == {"boxes", "scores", "labels"} and (found["boxes"][:, 2] <= 150 + 1e-3).all()
    segmenter = mobilenets.create_model("lraspp_mobilenet_v3_large", num_classes=4, resolution=96).eval()
    info = default_data_info(segmenter, {"classes": ["bg", "a", "b", "c"]})
    OPENVINO.export(segmenter, str(tmp_path / "s.xml"), info=info)  # a str path, as a user may give
    x = torch.rand(2, 3, 96, 96)
    assert rel(load_exported(tmp_path / "s.xml")(x), segmenter(x)["out"].detach()) < 1e-4


def test_bad_files_and_options_are_one_line_and_exit_2(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    out = tmp_path / "m.xml"
    cases = {
        "wrong suffix": (["export", "--format", "openvino", "--checkpoint", str(path), "--out", str(tmp_path / "m.onnx")], ".xml file"),
        "bf16 on onnx": (["export", "--checkpoint", str(path), "--out", str(tmp_path / "m.onnx"), "--precision", "bf16"], "ONNX Runtime runs fp32, int8, not bf16"),
        "onnx option": (["export", "--format", "openvino", "--checkpoint", str(path), "--out", str(out), "--opset", "18"], "--opset does not apply to --format openvino"),
        "missing": (["predict", "--exported", str(tmp_path / "none.xml"), str(tmp_path / "x.jpg")], "not found"),
        "unknown kind": (["predict", "--exported", str(tmp_path / "m.pb"), str(tmp_path / "x.jpg")], "not an exported model"),
    }  # fmt: skip
    for name, (argv, message) in cases.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (name, err)
    (tmp_path / "c.xml").write_text("<net>not a graph")
    (tmp_path / "c.bin").write_bytes(b"\0")
    assert main(["predict", "--exported", str(tmp_path / "c.xml"), str(tmp_path / "x.jpg")]) == 2
    assert "is not a loadable OpenVINO IR" in capsys.readouterr().err
    (tmp_path / "c.bin").unlink()
    assert main(["predict", "--exported", str(tmp_path / "c.xml"), str(tmp_path / "x.jpg")]) == 2
    assert "c.bin is missing" in capsys.readouterr().err
    import openvino

    foreign = openvino.convert_model(torch.nn.Conv2d(3, 4, 1).eval(), example_input=torch.rand(1, 3, 8, 8))
    openvino.save_model(foreign, str(tmp_path / "f.xml"))
    assert main(["predict", "--exported", str(tmp_path / "f.xml"), str(tmp_path / "x.jpg")]) == 2
    assert "carries no mobilenets metadata" in capsys.readouterr().err


def test_a_missing_runtime_is_named_with_its_extra(checkpoint, tmp_path, monkeypatch, capsys):
    path, _ = checkpoint
    monkeypatch.setattr(type(OPENVINO), "available", lambda self: False)
    argv = ["export", "--format", "openvino", "--checkpoint", str(path), "--out", str(tmp_path / "m.xml")]
    assert main(argv) == 2
    assert "OpenVINO is not installed: pip install 'mobilenets[openvino]'" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_times_every_openvino_precision_beside_onnx_runtime(capsys, quick_turns):
    pytest.importorskip("onnxruntime")
    from mobilenets.runtimes.bench import run_bench

    backends = ["onnxruntime", "openvino", "openvino-int8"]
    if OPENVINO.precision_problem("bf16") is None:
        backends.append("openvino-bf16")
    results = run_bench(["mobilenet_v2"], backends=backends, resolution=64, runs=2, warmup=1, references=False,
                        memory=False)  # fmt: skip
    assert [r.backend for r in results] == backends and not [r.error for r in results if r.error]
    assert all(r.median_ms > 0 for r in results)
