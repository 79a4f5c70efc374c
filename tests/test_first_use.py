"""The paths a new user tried first (issue 33): each broken flow, silent wrong result and raw
traceback they met, as it now behaves."""

from __future__ import annotations

import json
import sys
import urllib.error
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import mobilenets
from mobilenets.cli import main
from mobilenets.data import load_rgb
from mobilenets.detection.data import CocoDetection, find_detection_data
from mobilenets.errors import ConfigError, DataError, InputShapeError
from mobilenets.train import TrainConfig, train

from .conftest import SHARED_DATA, TORCHVISION_V2_WEIGHTS

QUIET = {"progress": False, "log": lambda *_: None}


# -- COCO JSON ------------------------------------------------------------------------------


def _coco(root, *, count=4, annotated=2, edits=None):
    """A COCO-JSON set: ``count`` 64x48 photos per split, the first ``annotated`` with a box each
    (category ids 1 and 3, with a gap), the rest background; ``edits`` change the train file."""
    for split in ("train", "val"):
        folder = root / "images" / split
        folder.mkdir(parents=True)
        records, boxes = [], []
        for i in range(count):
            picture = np.full((48, 64, 3), 90, dtype=np.uint8)
            picture[10:30, 20:50] = (200, 40, 40)
            Image.fromarray(picture).save(folder / f"{i}.jpg")
            records.append({"id": 100 + i, "file_name": f"{i}.jpg", "width": 64, "height": 48})
            if i < annotated:
                boxes.append({"id": i + 1, "image_id": 100 + i, "category_id": 1 + 2 * (i % 2),
                              "bbox": [20, 10, 30, 20], "area": 600, "iscrowd": 0})  # fmt: skip
        spec = {"images": records, "annotations": boxes,
                "categories": [{"id": 1, "name": "square"}, {"id": 3, "name": "blob"}]}  # fmt: skip
        if split == "train":
            for key, edit in (edits or {}).items():
                edit(spec[key])
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(spec))
    return root


def test_coco_images_without_annotations_train_and_evaluate(tmp_path, capsys):
    root = _coco(tmp_path / "coco")
    with pytest.warns(UserWarning, match="2 of 4 images have no annotations"):
        data = find_detection_data(root)
    image, target = data.train[3]  # a background image: an empty box list, not a missing key
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert data.classes == ["__background__", "square", "N/A", "blob"]
    out = tmp_path / "run"
    argv = ["train", "--model", "ssdlite_mobilenet_v2", "--recipe", "coco-ssdlite", "--data-dir", str(root),
            "--resolution", "96", "--epochs", "1", "--batch-size", "2", "--workers", "0", "--no-progress",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert "mAP" in capsys.readouterr().out
    code = main(["eval", "--checkpoint", str(out / "best.pt"), "--data-dir", str(root), "--workers", "0", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["images"] == 4
    # --val-subset takes the first N images, as training's does
    code = main(["eval", "--checkpoint", str(out / "best.pt"), "--data-dir", str(root), "--workers", "0", "--json",
                 "--val-subset", "3"])  # fmt: skip
    assert code == 0 and json.loads(capsys.readouterr().out)["images"] == 3


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"annotations": lambda a: a[0].update(category_id=99)}, ["annotations[0] (id 1)", "category_id 99", "1, 3"]),
        ({"annotations": lambda a: a[0].update(image_id=7)}, ["annotations[0]", "image_id 7"]),
        ({"annotations": lambda a: a[1].update(bbox=[50, 10, 30, 20])}, ["annotations[1]", "leaves the 64x48 image"]),
        ({"annotations": lambda a: a[0].update(bbox=[20, 10, 0, 20])}, ["annotations[0]", "no area"]),
        ({"annotations": lambda a: a[0].update(bbox="20 10 30 20")}, ["annotations[0]", "bbox must be"]),
        ({"images": lambda i: i[2].update(file_name="gone.jpg")}, ["images[2] (id 102)", "no image file", "gone.jpg"]),
        ({"categories": lambda c: c[0].update(id=0)}, ["categories[0]", "at least 1"]),
    ],
    ids=["category", "image id", "outside", "no area", "bbox", "missing image", "category 0"],
)
def test_coco_reader_names_the_file_and_record(tmp_path, changes, words):
    root = _coco(tmp_path / "coco", edits=changes)
    with pytest.raises(DataError) as caught:
        find_detection_data(root)
    message = str(caught.value)
    assert "instances_train.json" in message and all(word in message for word in words), message


def test_coco_reader_refuses_what_is_not_an_instances_file(tmp_path):
    root = _coco(tmp_path / "coco")
    (root / "annotations" / "instances_train.json").write_text("{not json")
    with pytest.raises(DataError, match="instances_train.json: not a COCO instances file"):
        find_detection_data(root)
    (root / "annotations" / "instances_train.json").write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(DataError, match="category list is empty"):
        CocoDetection(root / "images" / "train", root / "annotations" / "instances_train.json")


def test_detector_class_count_message_counts_named_classes(tmp_path, capsys):
    root = _coco(tmp_path / "coco")
    model = mobilenets.create_model("ssdlite_mobilenet_v2", num_classes=3, resolution=96)
    mobilenets.save_weights(model, tmp_path / "det.safetensors")
    code = main(["eval", "--checkpoint", str(tmp_path / "det.safetensors"), "--data-dir", str(root)])
    err = capsys.readouterr().err
    assert code == 2 and "has 2 classes (category ids up to 3: 4 outputs with the background)" in err, err


# -- images, data ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_high_bit_depth_grayscale_is_scaled_to_8_bits(tmp_path, mode):
    """A 16-bit PNG was pure white (Pillow clips 16-bit values to 255): it reads as its 8-bit copy."""
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    deep_file = tmp_path / ("deep.png" if mode == "I;16" else "deep.tif")
    if mode == "I;16":
        Image.fromarray(ramp).save(deep_file)  # Pillow writes a 16-bit PNG
    else:  # a 32-bit integer TIFF holding 16-bit values
        Image.fromarray(ramp.astype(np.int32), mode="I").save(deep_file)
    with Image.open(deep_file) as image:
        assert image.mode == mode
    Image.fromarray((ramp // 257).astype(np.uint8)).save(tmp_path / "flat.png")
    deep, flat = np.asarray(load_rgb(deep_file)), np.asarray(load_rgb(tmp_path / "flat.png"))
    assert deep.shape == flat.shape == (48, 64, 3)
    assert np.abs(deep.astype(int) - flat.astype(int)).max() <= 1
    assert deep.min() == 0 and deep.max() == 255


def test_train_and_val_folders_that_differ_are_named(tmp_path):
    for split, names in (("train", ["cat", "dog", "emu"]), ("val", ["cat", "dog", "fox"])):
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / name / "0.png")
    from mobilenets.data import build_datasets

    with pytest.raises(DataError, match=r"only in train/: emu; only in val/: fox"):
        build_datasets(tmp_path, style="cifar", resolution=32)


def test_download_without_network_is_one_line(tmp_path, monkeypatch, capsys):
    import torchvision.datasets.cifar as cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    argv = ["train", "--model", "mobilenet_v1", "--width-mult", "0.25", "--dataset", "cifar10", "--download",
            "--data-dir", str(tmp_path / "cifar"), "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not download CIFAR10" in err and "name resolution" in err, err


# -- runs: resume, classes, options ----------------------------------------------------------


def _tiny(root, classes=("a", "b")):
    for split in ("train", "val"):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (32, 32), (60 * index, 20 * i, 0)).save(folder / f"{i}.png")
    return root


def _config(data, out, **changes):
    settings = dict(model="mobilenet_v1", width_mult=0.25, recipe="cifar10", data_dir=str(data), out=str(out),
                    epochs=1, batch_size=4, workers=0)  # fmt: skip
    return TrainConfig(**{**settings, **changes})


def test_resume_refuses_other_data_and_other_epochs(tmp_path):
    first, second = _tiny(tmp_path / "one"), _tiny(tmp_path / "two", classes=("c", "d"))
    train(_config(first, tmp_path / "run"), **QUIET)
    records = (tmp_path / "run" / "config.json").read_text()
    for changes, word in [({"data_dir": str(second)}, "data_dir"), ({"epochs": 3}, "epochs")]:
        with pytest.raises(ConfigError, match=f"different settings.*{word}"):
            train(_config(first, tmp_path / "run", **changes), **QUIET)
    assert (tmp_path / "run" / "config.json").read_text() == records  # nothing overwritten
    # the same folder reached by another path is the same data
    relative = _config(first, tmp_path / "run", data_dir=str(first / ".." / "one"))
    assert train(relative, **QUIET)["epochs"] == 1


def test_init_from_other_classes_starts_a_new_classifier(tmp_path):
    """As many classes but other ones: the old rows would score the wrong classes, so the
    classifier starts afresh (as it does for another number of classes) and the log says why."""
    train(_config(_tiny(tmp_path / "one"), tmp_path / "first"), **QUIET)
    start = torch.load(tmp_path / "first" / "best.pt", weights_only=True)["model"]
    lines = []
    config = _config(_tiny(tmp_path / "two", classes=("c", "d")), tmp_path / "second",
                     init_from=str(tmp_path / "first" / "best.pt"), lr=1e-12)  # fmt: skip
    train(config, progress=False, log=lines.append)
    assert any("trained on other classes: class 0 is 'a' there, 'c' here" in line for line in lines), lines
    after = torch.load(tmp_path / "second" / "last.pt", weights_only=True)["model"]
    head = [k for k in after if k.startswith("classifier") and k.endswith("weight")]
    assert head and not torch.equal(after[head[0]], start[head[0]])
    body = [k for k in after if k.startswith("features.0.") and k.endswith("weight")]
    assert torch.allclose(after[body[0]], start[body[0]])  # the body kept its weights (lr ~ 0)
    # the same classes keep their rows
    lines.clear()
    train(_config(tmp_path / "one", tmp_path / "third", init_from=str(tmp_path / "first" / "best.pt")),
          progress=False, log=lines.append)  # fmt: skip
    assert not any("other classes" in line for line in lines)


def test_teacher_is_announced_and_ignored_options_are_refused_or_warned(tmp_path):
    data = _tiny(tmp_path / "one")
    train(_config(data, tmp_path / "teacher"), **QUIET)
    lines = []
    train(_config(data, tmp_path / "student", teacher=str(tmp_path / "teacher" / "best.pt")),
          progress=False, log=lines.append)  # fmt: skip
    assert any(line.startswith("teacher ") and "loaded" in line for line in lines), lines
    with pytest.raises(ConfigError, match="give teacher="):
        train(_config(data, tmp_path / "x", distill_weight=0.3), **QUIET)
    lines.clear()
    train(_config(data, tmp_path / "probe", freeze_body_epochs=1, body_lr_mult=0.5), progress=False,
          log=lines.append)  # fmt: skip
    assert any("body stays frozen for the whole run" in line for line in lines), lines


def test_finetune_draws_no_progress_bars_into_a_pipe(monkeypatch):
    seen = {}
    monkeypatch.setattr("mobilenets.train.loop.train", lambda config, progress, log: seen.update(progress=progress))
    monkeypatch.setattr(sys, "stderr", SimpleNamespace(isatty=lambda: False, write=lambda *_: None))
    mobilenets.train.finetune("mobilenet_v2", "w.pth", "data", "out")
    assert seen["progress"] is False


def test_metrics_are_printed_in_percent():
    from mobilenets.detection.train import DetectionTrainer
    from mobilenets.segmentation.train import SegmentationTrainer

    trainer = SimpleNamespace(recipe=SimpleNamespace(epochs=3))
    record = {"epoch": 1, "train_loss": 0.5, "miou": 0.00109, "pixel_acc": 0.0064, "map": 0.0225, "map50": 0.29,
              "train_images_per_s": 3.0}  # fmt: skip
    assert "val mIoU 0.11%, pixel acc 0.64%" in SegmentationTrainer._metrics_text(trainer, record)
    assert "val mAP 2.25%, mAP50 29.00%" in DetectionTrainer._metrics_text(trainer, record)


# -- export, bench, profile ------------------------------------------------------------------


def test_adaptive_pooling_that_onnx_cannot_express_is_exported_as_matrices(tmp_path):
    """torchvision's VGG at 32x32 pools 1x1 to 7x7, which the ONNX exporter refused with a
    131-line dump: the pooling is exported as the same averages written as two matrices."""
    from mobilenets.export import OnnxClassifier, export_onnx
    from mobilenets.export.onnx import exportable_pooling

    for in_hw, out_hw in [((1, 1), (7, 7)), ((5, 9), (3, 4)), ((10, 10), (7, 7))]:
        pool, x = nn.AdaptiveAvgPool2d(out_hw), torch.randn(2, 3, *in_hw)
        wrapped = nn.Sequential(nn.Identity(), pool)
        expected = pool(x)
        assert exportable_pooling(wrapped, x) == 1
        assert torch.allclose(wrapped(x), expected, atol=1e-6)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(72, 4))
    net.in_channels = 3
    info = {"resolution": 22, "transforms": "imagenet", "classes": list("abcd")}
    report = export_onnx(net.eval(), tmp_path / "pool.onnx", info=info)
    assert report.max_relative_error < 1e-4
    x = torch.randn(1, 3, 22, 22)
    assert torch.allclose(OnnxClassifier(tmp_path / "pool.onnx")(x), net(x), atol=1e-4)


def test_export_writes_its_summary_beside_the_file_not_over_a_stem(tmp_path, capsys):
    own = tmp_path / "m.json"
    own.write_text("the user's own file")
    model = mobilenets.create_model("mobilenet_v1", width_mult=0.25, num_classes=10, cifar=True)
    mobilenets.save_weights(model, tmp_path / "v1.safetensors")
    assert main(["export", "--checkpoint", str(tmp_path / "v1.safetensors"), "--out", str(tmp_path / "m.onnx")]) == 0
    summary = json.loads((tmp_path / "m.onnx.export.json").read_text())
    assert summary["fp32"] == str(tmp_path / "m.onnx") and own.read_text() == "the user's own file"
    assert "m.onnx.export.json" in capsys.readouterr().out


def test_export_random_weights_only_when_asked(tmp_path, capsys):
    out = tmp_path / "r.onnx"
    argv = ["export", "--model", "mobilenet_v1", "--width-mult", "0.25", "--resolution", "64", "--out", str(out)]
    assert main(argv) == 2 and not out.exists()
    assert main([*argv, "--random-weights"]) == 0 and out.exists()


def test_bench_takes_a_fine_tuned_checkpoints_architecture_from_the_file(tmp_path):
    """A 3-class fine-tuned MobileNetV2 is benchmarked as such, scored on its own classes."""
    from mobilenets.runtimes.bench import run_bench

    names = ["a", "b", "c"]
    model = mobilenets.create_model("mobilenet_v2", width_mult=0.35, num_classes=3, resolution=64)
    info = {"classes": names, "transforms": "imagenet", "resolution": 64}
    mobilenets.save_weights(model, tmp_path / "ft.safetensors", data_info=info)
    for index, name in enumerate(names):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.new("RGB", (64, 64), (80 * index, 0, 0)).save(tmp_path / "data" / name / "0.png")
    results = run_bench(["mobilenet_v2"], backends=["eager"], runs=1, warmup=0, references=False, memory=False,
                        weights={"mobilenet_v2": tmp_path / "ft.safetensors"}, eval_data=tmp_path / "data")  # fmt: skip
    assert len(results) == 1 and results[0].top1 is not None and 0 <= results[0].top1 <= 100
    with pytest.raises(ConfigError, match="holds a mobilenet_v2, not a mobilenet_v1"):
        run_bench(["mobilenet_v1"], backends=["eager"], runs=1, warmup=0, references=False, memory=False,
                  weights={"mobilenet_v1": tmp_path / "ft.safetensors"})  # fmt: skip


def test_profile_reads_a_checkpoint(tmp_path, capsys):
    model = mobilenets.create_model("mobilenet_v2", width_mult=0.5, num_classes=10, resolution=96)
    mobilenets.save_weights(model, tmp_path / "m.safetensors")
    assert main(["profile", "--checkpoint", str(tmp_path / "m.safetensors"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mult_adds"] == mobilenets.profile(model, (3, 96, 96)).mult_adds


# -- the Python API --------------------------------------------------------------------------


def test_api_refuses_what_is_not_a_model(tmp_path):
    for call in (
        lambda: mobilenets.profile("mobilenet_v2"),
        lambda: mobilenets.decouple(None, rank=2),
        lambda: mobilenets.decompose("vgg16", "cp", rank=2),
        lambda: mobilenets.save_weights("mobilenet_v2", tmp_path / "m.safetensors"),
    ):
        with pytest.raises(ConfigError, match="must be a torch.nn.Module"):
            call()
    assert not (tmp_path / "m.safetensors").exists()


def test_decouple_takes_numpy_calibration_images():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)).eval()
    images = np.random.default_rng(0).normal(size=(8, 3, 12, 12)).astype(np.float32)
    _, from_numpy = mobilenets.decouple(net, rank=3, calibration=images, input_size=(3, 12, 12))
    _, from_tensor = mobilenets.decouple(net, rank=3, calibration=torch.from_numpy(images), input_size=(3, 12, 12))
    assert from_numpy.refined and from_numpy.mult_adds_after == from_tensor.mult_adds_after
    with pytest.raises(ConfigError, match=r"\(N, C, H, W\)"):
        mobilenets.decouple(net, rank=3, calibration=images[0], input_size=(3, 12, 12))


def test_decompose_skips_a_reflect_padded_conv_and_lists_it():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1))  # fmt: skip
    for method in ("spatial", "tucker", "channel+decouple"):
        _, report = mobilenets.decompose(net, method, target_reduction=1.5, input_size=(3, 16, 16))
        assert "padding_mode='reflect'" in report.skipped["0"] and report.reduction >= 1.5 * (1 - 1e-9)
    _, report = mobilenets.decouple(net, rank=3, input_size=(3, 16, 16))  # decoupling keeps any padding
    assert "0" not in report.skipped


def test_detector_input_mistakes_are_input_shape_errors():
    model = mobilenets.create_model("ssdlite_mobilenet_v2", num_classes=3, width_mult=0.5, resolution=96).eval()
    for images, words in [
        (torch.rand(3, 96, 96), "pass [image]"),
        (np.zeros((96, 96, 3), dtype=np.float32), "got ndarray"),
        ([np.zeros((96, 96, 3))], "torch.from_numpy"),
        ([torch.rand(96, 96, 3)], "(3, H, W)"),
        ([torch.zeros(3, 96, 96, dtype=torch.uint8)], "float() / 255"),
    ]:
        with pytest.raises(InputShapeError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            model(images)
    with torch.no_grad():
        assert len(model(torch.rand(2, 3, 96, 96))) == len(model([torch.rand(3, 96, 96)] * 2)) == 2


def test_detector_weights_for_another_class_count_or_a_classifier_say_what_to_do(tmp_path):
    mobilenets.save_weights(mobilenets.create_model("ssdlite_mobilenet_v2", num_classes=81), tmp_path / "d.safetensors")
    with pytest.raises(mobilenets.WeightsError, match="class predictions differ.*91 classes.*81 in the file"):
        mobilenets.create_model("ssdlite_mobilenet_v2", weights=tmp_path / "d.safetensors")
    with pytest.raises(mobilenets.WeightsError, match=r"classifier's file.*model\.backbone\.body"):
        mobilenets.create_model("ssdlite_mobilenet_v2", weights=TORCHVISION_V2_WEIGHTS)


# -- decoupling ------------------------------------------------------------------------------


def test_a_target_a_layer_cannot_reach_is_met_by_the_others():
    """A stem reading 3 channels cannot shrink much; the uniform allocation of the decompositions
    refused the whole model ("at most 0 of the 1 needed"), it now keeps that layer and cuts the rest."""
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(64, 64, 3, padding=1))  # fmt: skip
    # spatial: the stem's cheapest rank is 12% of its mult-adds; at 9x the others must go below 10%
    _, report = mobilenets.decompose(net, "spatial", target_reduction=9, input_size=(3, 16, 16))
    assert report.reduction >= 9 * (1 - 1e-9)
    assert "cheap enough" in next(layer.note for layer in report.layers if layer.name == "0")
    for method in ("tucker", "channel", "cp"):
        _, report = mobilenets.decompose(net, method, target_reduction=2.5, input_size=(3, 16, 16))
        assert report.reduction >= 2.5 * (1 - 1e-9), method


def test_an_unreachable_target_names_mult_adds_and_the_convertible_layers():
    model = mobilenets.create_model("mobilenet_v2", width_mult=0.5, num_classes=10, cifar=True)
    with pytest.raises(ConfigError, match=r"mult-adds needed .* 1 regular k x k convolution \(features\.0\.conv\)"):
        mobilenets.decouple(model, target_reduction=2, input_size=(3, 32, 32))


def test_cp_als_fits_as_tensorly_does():
    """The conv-shaped CP-ALS reaches the fit of tensorly's parafac (the reference algorithm) on
    the same kernel and rank, and is exact at the full rank."""
    tensorly = pytest.importorskip("tensorly")
    from tensorly.decomposition import parafac

    from mobilenets.decouple.baselines import cp_als

    tensorly.set_backend("pytorch")
    weight = torch.randn(12, 8, 3, 3, generator=torch.Generator().manual_seed(0))

    def error(weights, factors):
        rebuilt = torch.einsum("r,nr,mr,yr,xr->nmyx", weights, *factors)
        return float((rebuilt - weight).norm() / weight.norm())

    ours = error(*cp_als(weight, 20, iterations=100, tol=1e-7))
    with warnings.catch_warnings():  # its SVD start says it pads ranks above a side's size
        warnings.simplefilter("ignore")
        reference = parafac(weight.double(), rank=20, init="svd", n_iter_max=100, tol=1e-7)
    theirs = error(reference.weights.float(), [f.float() for f in reference.factors])
    assert ours <= theirs * 1.1 + 1e-3, (ours, theirs)
    assert error(*cp_als(weight, 8 * 9, iterations=200, tol=1e-9)) < 1e-3


def test_sweep_without_eval_data_prints_no_nan(tmp_path, capsys):
    argv = ["decouple", "--model", "vgg16", "--cifar", "--width-mult", "0.125", "--num-classes", "10",
            "--sweep", "2", "--out", str(tmp_path / "sweep")]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "nan" not in captured.out and "no --eval-data" in captured.out
    assert "converting: cp at 2x" in captured.err
    assert not (tmp_path / "sweep" / "sweep.png").exists()


def test_latency_report_gives_the_spread_and_the_target_verdict(tmp_path, capsys):
    argv = ["decouple", "--model", "vgg16", "--cifar", "--width-mult", "0.125", "--num-classes", "10", "--rank", "2",
            "--out", str(tmp_path / "d")]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    for when in ("latency_before", "latency_after"):
        low, high = (float(v) for v in report["extra"][when]["eager_range"].removesuffix(" ms").split("-"))
        assert low <= report["extra"][when]["eager_ms"] <= high


def test_help_says_what_the_commands_do(capsys):
    for argv, words in [
        (["--help"], ["ExecuTorch"]),
        (["bench", "--help"], ["default: eager, channels_last, onnxruntime, onnxruntime-int8", "comma-separated"]),
        (["train", "--help"], ["--freeze-layers 2", "README's fine-tuning command uses 2"]),
        (["eval", "--help"], ["image-decoding processes"]),
        (["predict", "--help"], ["as JSON"]),
        (["export", "--help"], [".export.json", "--random-weights"]),
    ]:
        assert main(argv) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert all(word in out for word in words), (argv, words)


def test_a_one_epoch_run_is_drawn_with_markers(tmp_path, monkeypatch):
    from mobilenets import plots

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"model": "m"}}))
    record = {"epoch": 1, "train_loss": 1.0, "loss": 1.1, "top1": 0.5, "top5": 0.9, "lr": 0.1, "wall_s": 3.0}
    (run / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, out: figures.append(figure) or out)
    plots.plot_runs([run], tmp_path / "p.png")
    lines = [line for axes in figures[0].axes for line in axes.get_lines()]
    assert lines and all(line.get_marker() not in (None, "None", "", " ") for line in lines)


def test_runs_of_one_network_are_compared_by_bars_not_by_cost(tmp_path, monkeypatch):
    """plot's third panel: runs of one network (same mult-adds: seeds, settings) as a bar each of the final
    score; runs of different sizes as accuracy against mult-adds."""
    from mobilenets import plots

    def run(name, mult_adds, score):
        folder = tmp_path / name
        folder.mkdir()
        record = {"epoch": 1, "train_loss": 1.0, "map": score, "map50": 2 * score, "lr": 0.1}
        (folder / "metrics.jsonl").write_text(json.dumps(record) + "\n")
        (folder / "summary.json").write_text(json.dumps({"mult_adds": mult_adds, "map": score}))
        return folder

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, out: figures.append(figure) or out)
    same = [run("seed0", 1e9, 0.3), run("seed1", 1e9, 0.2)]
    plots.plot_runs(same, tmp_path / "p.png")
    panel = figures[-1].axes[2]
    assert [bar.get_width() for bar in panel.patches] == pytest.approx([30, 20])
    assert [t.get_text() for t in panel.get_yticklabels()] == ["seed0", "seed1"]
    assert panel.get_title() == "final score (1000M mult-adds each)" and "mAP@[.5:.95]" in panel.get_xlabel()
    plots.plot_runs([*same, run("wider", 2e9, 0.35)], tmp_path / "p.png")
    panel = figures[-1].axes[2]
    assert panel.get_title() == "accuracy against cost" and panel.get_xscale() == "log" and not panel.patches


def test_imagenet_sample_still_reads(shared_data):
    """(the loader change for 16-bit images leaves 8-bit photos byte for byte as Pillow reads them)"""
    path = SHARED_DATA / "imagenet-sample" / "n01440764" / "n01440764_tench.jpg"
    with Image.open(path) as image:
        assert np.array_equal(np.asarray(load_rgb(path)), np.asarray(image.convert("RGB")))
