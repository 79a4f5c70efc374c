"""ExecuTorch export (the [mobile] extra): the .pte a phone loads, checked in ExecuTorch's runtime."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

import mobilenets
from mobilenets.cli import main
from mobilenets.predict import default_data_info

from .conftest import SHARED_DATA, TORCHVISION_V2_WEIGHTS
from .test_export import trained_like

pytest.importorskip("executorch")

from mobilenets.export import ExportError  # noqa: E402
from mobilenets.export.executorch import PteModel, export_executorch, load_pte, metadata_path  # noqa: E402


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_cli_export_and_predict_pte_match_pytorch(tmp_path, capsys):
    """A trained-like MobileNetV2 checkpoint through 'export --format executorch' and
    'predict --pte': the runtime's logits on real images equal PyTorch's, the sidecar carries
    the classes and preprocessing, and predict names the same classes as from the checkpoint."""
    model = trained_like(mobilenets.create_model("mobilenet_v2", width_mult=0.35, resolution=64, num_classes=10))
    info = {**default_data_info(model), "classes": [f"class{i}" for i in range(10)], "transforms": "cifar"}
    checkpoint = mobilenets.save_weights(model, tmp_path / "m.safetensors", data_info=info)
    out = tmp_path / "m.pte"
    assert main(["export", "--format", "executorch", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "every operator in XNNPACK" in printed and "max relative error" in printed
    sidecar = json.loads(metadata_path(out).read_text())
    assert sidecar["classes"] == info["classes"] and sidecar["precision"] == "fp32"
    assert sidecar["transforms"] == "cifar" and sidecar["resolution"] == 64
    images = sorted((SHARED_DATA / "cifar10" / "test" / "cat").iterdir())[:2]
    assert main(["predict", "--pte", str(out), "--json", *map(str, images)]) == 0
    from_pte = json.loads(capsys.readouterr().out)
    assert main(["predict", "--checkpoint", str(checkpoint), "--json", *map(str, images)]) == 0
    from_checkpoint = json.loads(capsys.readouterr().out)
    for a, b in zip(from_pte, from_checkpoint):
        assert [name for name, _ in a["top"]] == [name for name, _ in b["top"]]
        assert [p for _, p in a["top"]] == pytest.approx([p for _, p in b["top"]], abs=1e-4)
    x = torch.rand(3, 3, 64, 64)
    assert rel(PteModel(out)(x), model.eval()(x)) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v3_small", "mobilenet_v3_large"])
def test_every_family_runs_in_executorch_as_in_pytorch(tmp_path, name):
    """V1 and V3 (hard-swish, squeeze-excitation) lowered whole to XNNPACK, equal to PyTorch."""
    model = trained_like(mobilenets.create_model(name, width_mult=0.5, resolution=96, num_classes=10))
    report = export_executorch(model, tmp_path / "m.pte", info=default_data_info(model))
    assert report.outside == [] and report.max_relative_error < 1e-4
    x = torch.rand(2, 3, 96, 96)
    assert rel(PteModel(tmp_path / "m.pte")(x), model(x)) < 1e-5


@pytest.mark.slow
def test_detector_pte_finds_the_boxes_pytorch_finds(tmp_path):
    """SSDLite's network and box decoding in one .pte; NMS after it, as for ONNX."""
    model = mobilenets.create_model("ssdlite320_mobilenet_v3_large", num_classes=5).eval()
    export_executorch(model, tmp_path / "d.pte", info=default_data_info(model))
    detector = load_pte(tmp_path / "d.pte")
    image = torch.rand(3, 240, 320)
    ours, theirs = detector([image])[0], model([image])[0]
    assert torch.allclose(ours["boxes"], theirs["boxes"], atol=1e-2)
    assert torch.equal(ours["labels"], theirs["labels"])


@pytest.mark.slow
def test_int8_pte_keeps_top1_on_real_images(tmp_path, capsys):
    """PT2E int8 for XNNPACK from the CLI, calibrated on 200 COCO photos and evaluated on the
    1,000 ImageNet images it never saw: within the 1 point the int8 export promises.  Measured
    here: fp32 83.8 %, int8 83.0 % with percentile ranges (the default), 80.8 % with PT2E's
    own histogram ranges; a broken kernel (the int8 classifier gave ~uncorrelated logits)
    falls far below."""
    out = tmp_path / "int8.pte"
    argv = ["export", "--format", "executorch", "--model", "mobilenet_v2", "--weights", str(TORCHVISION_V2_WEIGHTS)]
    argv += ["--out", str(out), "--int8", "--calibration", str(SHARED_DATA / "coco128" / "images")]
    assert main([*argv, "--eval-data", str(SHARED_DATA / "imagenet-sample")]) == 0
    accuracy = json.loads(out.with_name(out.name + ".export.json").read_text())["accuracy"]
    assert accuracy["pytorch"]["top1"] > 0.8
    assert accuracy["executorch_int8"]["top1"] >= accuracy["pytorch"]["top1"] - 0.01


def test_bad_pte_files_are_refused_clearly(tmp_path):
    """A missing file, a .pte without its metadata and a corrupt .pte each get one line."""
    with pytest.raises(ExportError, match="not found"):
        PteModel(tmp_path / "none.pte")
    corrupt = tmp_path / "corrupt.pte"
    corrupt.write_bytes(b"\x00not a flatbuffer" * 10)
    with pytest.raises(ExportError, match="corrupt.pte.json is missing"):
        PteModel(corrupt)
    metadata_path(corrupt).write_text(json.dumps({"resolution": 64, "classes": []}))
    with pytest.raises(ExportError, match="not a loadable ExecuTorch program"):
        PteModel(corrupt)
    metadata_path(corrupt).write_text("{")
    with pytest.raises(ExportError, match="not valid JSON"):
        PteModel(corrupt)


class DataDependent(nn.Module):
    """Control flow on the input's values: torch.export cannot capture one graph for it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y if y.sum() > 0 else -y


def test_models_executorch_cannot_take_are_refused_in_one_line(tmp_path, monkeypatch):
    info = {"resolution": 16, "classes": ["a"], "transforms": "imagenet"}
    with pytest.raises(ExportError, match="torch.export cannot capture DataDependent"):
        export_executorch(DataDependent(), tmp_path / "m.pte", info=info)
    assert not (tmp_path / "m.pte").exists()
    with pytest.raises(mobilenets.ConfigError, match=r"\.pte file"):
        export_executorch(DataDependent(), tmp_path / "m.onnx", info=info)
    monkeypatch.setitem(sys.modules, "executorch.exir", None)  # as if the [mobile] extra were not installed
    with pytest.raises(mobilenets.ConfigError, match=r"mobilenets\[mobile\]"):
        export_executorch(DataDependent(), tmp_path / "m.pte", info=info)


def test_percentile_ranges_cut_each_activation_where_the_onnx_path_does():
    """The int8 ranges ExecuTorch exports use by default: a never-negative tensor keeps 0 and
    loses its top 1 - p; a signed one loses (1 - p) / 2 at each end (here p = 99 %)."""
    from mobilenets.export.pt2e_ranges import percentile_observer

    def observed(values):
        observer = percentile_observer()(
            dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine, percentile=99.0
        )
        for chunk in values.split(1000):  # as calibration images arrive, the histogram re-bins
            observer(chunk)
        scale, zero_point = observer.calculate_qparams()
        low = (-128 - zero_point.item()) * scale.item()
        return low, low + 255 * scale.item()

    ramp = torch.arange(10000, dtype=torch.float32)[torch.randperm(10000, generator=torch.Generator().manual_seed(0))]
    low, high = observed(ramp)
    assert low == pytest.approx(0, abs=40) and high == pytest.approx(9900, abs=40)
    low, high = observed(ramp - 5000)
    assert low == pytest.approx(-4950, abs=40) and high == pytest.approx(4950, abs=40)


def test_cli_passes_the_calibration_options_to_the_runtimes_export(tmp_path, capsys, monkeypatch):
    """export --format executorch goes through the runtime registry like every other format: the
    options ExecuTorch declares (Runtime.export_options) reach its export, and its own report line
    is what the command prints."""
    from mobilenets.runtimes.executorch import ExecuTorchRuntime

    seen = {}

    def export(self, model, path, **options):
        seen.update(options)
        return {"pte": str(path), "precision": options["precision"], "max_relative_error": 0.0,
                "message": f"wrote {path} (the runtime's own line)"}  # fmt: skip

    monkeypatch.setattr(ExecuTorchRuntime, "export", export)
    model = mobilenets.create_model("mobilenet_v2", width_mult=0.35, resolution=64, num_classes=10)
    checkpoint = mobilenets.save_weights(model, tmp_path / "m.safetensors", data_info=default_data_info(model))
    argv = ["export", "--format", "executorch", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.pte"),
            "--int8", "--calibration", str(SHARED_DATA / "coco128" / "images"), "--calibration-images", "4",
            "--calibration-method", "minmax", "--calibration-percentile", "99.9"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert (seen["calibration_method"], seen["percentile"], seen["precision"]) == ("minmax", 99.9, "int8")
    assert len(seen["calibration"]) == 4
    printed = capsys.readouterr().out
    assert "lowering takes about a minute" in printed and "(the runtime's own line)" in printed
