"""The paths a new user walks first: evaluating weights, predicting photos, saving and
reloading converted networks, sharing files, counting any network's cost."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

import mobilenets
from mobilenets.cli import main
from mobilenets.files import atomic_write

from .conftest import TORCHVISION_V2_WEIGHTS


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory, shared_data):
    """A CIFAR checkpoint from one tiny training epoch (real class names recorded)."""
    out = tmp_path_factory.mktemp("cifar-run") / "run"
    config = mobilenets.train.TrainConfig(
        model="mobilenet_v1", data_dir=str(shared_data / "cifar10"), out=str(out), width_mult=0.25,
        train_subset=40, val_subset=20, epochs=1, batch_size=20,
    )  # fmt: skip
    mobilenets.train.train(config, progress=False, log=lambda *_: None)
    return out


def test_eval_of_weights_without_class_names(capsys, cifar_run, shared_data, tmp_path):
    """A file saved with save_weights records no class names: eval maps folders by sorted order."""
    model = mobilenets.load_model(cifar_run / "best.pt")
    mobilenets.save_weights(model, tmp_path / "plain.safetensors")
    args = ["--data-dir", shared_data / "cifar10", "--val-subset", "20", "--workers", "0", "--json"]
    code, out, err = run(capsys, "eval", "--checkpoint", tmp_path / "plain.safetensors", *args)
    assert code == 0 and "sorted class folders" in err
    plain = json.loads(out)
    code, out, err = run(capsys, "eval", "--checkpoint", cifar_run / "best.pt", *args)
    assert code == 0 and "sorted" not in err  # names recorded and matching: no note
    assert json.loads(out)["top1"] == plain["top1"]
    # 3 images over 10 classes: the 7 classes without images say so instead of "0.00%"
    code, out, _ = run(capsys, "eval", "--checkpoint", cifar_run / "best.pt", "--data-dir", shared_data / "cifar10",
                       "--val-subset", "3", "--workers", "0")  # fmt: skip
    assert code == 0 and out.count("(no images)") == 7 and out.count("(1 image)") == 3
    # recorded names that differ from the folders are refused, naming the first difference
    renamed = tmp_path / "renamed" / "test"
    for i, cls in enumerate(sorted((shared_data / "cifar10" / "test").iterdir())):
        (renamed / f"c{i}").mkdir(parents=True)
        (renamed / f"c{i}" / "0.jpg").symlink_to(next(cls.iterdir()))
    code, _, err = run(
        capsys, "eval", "--checkpoint", cifar_run / "best.pt", "--data-dir", renamed.parent, "--workers", "0"
    )
    assert code == 2 and "'c0'" in err and "'airplane'" in err


def test_eval_of_torchvision_weights_scores_what_torchvision_scores(capsys, shared_data):
    """Issue 14's command on the first 100 images of the plain folder of wnid folders (its own
    preprocessing, batch norms folded, NHWC): top-1 and top-5 are torchvision's own network's on the
    same images read by torchvision's ImageFolder and transforms, within one image (folding moves
    logits by ~1e-5, which may reorder a near tie).  All 1,000 images: the slow test below."""
    import torchvision.transforms.v2 as T

    if not TORCHVISION_V2_WEIGHTS.is_file():
        pytest.skip("torchvision MobileNetV2 weights not in shared data")
    code, out, _ = run(
        capsys, "eval", "--model", "mobilenet_v2", "--weights", TORCHVISION_V2_WEIGHTS,
        "--data-dir", shared_data / "imagenet-sample", "--val-subset", "100", "--json",
    )  # fmt: skip
    metrics = json.loads(out)
    assert code == 0 and metrics["images"] == 100 and set(metrics) >= {"top1", "top5", "loss", "images"}
    preprocess = T.Compose([T.ToImage(), T.Resize(256), T.CenterCrop(224), T.ToDtype(torch.float32, scale=True),
                            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])  # fmt: skip
    folder = torchvision.datasets.ImageFolder(shared_data / "imagenet-sample", transform=preprocess)
    images, labels = zip(*(folder[i] for i in range(100)))
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(torch.load(TORCHVISION_V2_WEIGHTS, weights_only=True))
    with torch.no_grad():
        ranked = reference.eval()(torch.stack(images)).topk(5, dim=1).indices
    hits = ranked == torch.tensor(labels)[:, None]
    assert abs(100 * metrics["top1"] - hits[:, 0].sum().item()) <= 1, (metrics, hits[:, 0].sum())
    assert abs(100 * metrics["top5"] - hits.any(1).sum().item()) <= 1, (metrics, hits.any(1).sum())


@pytest.mark.slow
def test_eval_of_torchvision_weights_on_imagenet_sample(capsys, shared_data):
    """Issue 14's command on all 1,000 images: the README's 83.8 % / 96.0 % (20-28 s on 2 cores)."""
    if not TORCHVISION_V2_WEIGHTS.is_file():
        pytest.skip("torchvision MobileNetV2 weights not in shared data")
    code, out, _ = run(
        capsys, "eval", "--model", "mobilenet_v2", "--weights", TORCHVISION_V2_WEIGHTS,
        "--data-dir", shared_data / "imagenet-sample", "--json",
    )  # fmt: skip
    metrics = json.loads(out)
    assert code == 0 and metrics["images"] == 1000
    assert round(100 * metrics["top1"], 1) == 83.8 and round(100 * metrics["top5"], 1) == 96.0


def test_eval_of_an_export_of_torchvision_weights_on_imagenet_sample(capsys, shared_data, tmp_path):
    """The same weights exported: the file carries ImageNet's display names as published names, not
    as folder names it was trained on, so the wnid folders map onto it by position as they do for
    the weights (it was refused: 'n01440764' in the data, 'tench' in the model); a file written
    before the names' source was recorded is read the same way."""
    if not TORCHVISION_V2_WEIGHTS.is_file():
        pytest.skip("torchvision MobileNetV2 weights not in shared data")
    from mobilenets.export.ort import read_metadata, set_metadata

    out = tmp_path / "v2.onnx"
    assert run(capsys, "export", "--model", "mobilenet_v2", "--weights", TORCHVISION_V2_WEIGHTS, "--out", out)[0] == 0
    assert read_metadata(out)["classes_source"] == "imagenet"
    args = ["--data-dir", shared_data / "imagenet-sample", "--val-subset", "50", "--json"]
    code, printed, _ = run(capsys, "eval", "--exported", out, *args)
    assert code == 0 and json.loads(printed)["top1"] > 0.75
    import onnx

    older = onnx.load(str(out))
    metadata = read_metadata(out)
    del metadata["classes_source"]
    set_metadata(older, metadata)
    onnx.save(older, str(tmp_path / "older.onnx"))
    code, again, _ = run(capsys, "eval", "--exported", tmp_path / "older.onnx", *args)
    assert code == 0 and json.loads(again)["top1"] == json.loads(printed)["top1"]


def test_predict_takes_folders_of_images(capsys, cifar_run, shared_data, tmp_path):
    """A folder stands for every image under it, sorted (it was 'cannot read image DIR: Is a directory');
    the predictions are those of the files named one by one; a folder without images is one line."""
    import shutil

    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    sample = shared_data / "imagenet-sample"
    shutil.copy(sample / "n01440764" / "n01440764_tench.jpg", folder / "b.jpg")
    shutil.copy(sample / "n01443537" / "n01443537_goldfish.jpg", folder / "more" / "a.jpg")
    (folder / "notes.txt").write_text("not an image")
    code, out, _ = run(capsys, "predict", "--checkpoint", cifar_run / "best.pt", folder, "--json")
    named = [folder / "b.jpg", folder / "more" / "a.jpg"]
    assert code == 0 and [entry["image"] for entry in json.loads(out)] == [str(p) for p in named]
    assert json.loads(out) == json.loads(run(capsys, "predict", "--checkpoint", cifar_run / "best.pt", *named, "--json")[1])
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "predict", "--checkpoint", cifar_run / "best.pt", tmp_path / "empty")
    assert code == 2 and "empty holds no images" in err and len(err.strip().splitlines()) == 1


def test_predict_resizes_photos_for_a_cifar_model(capsys, cifar_run, shared_data, tmp_path):
    """Photos of different sizes through a 32x32 model, in PyTorch and ONNX Runtime alike."""
    photos = [
        shared_data / "imagenet-sample" / "n01440764" / "n01440764_tench.jpg",
        sorted((shared_data / "coco128" / "images").rglob("*.jpg"))[0],
    ]
    assert Image.open(photos[0]).size != Image.open(photos[1]).size
    code, out, _ = run(capsys, "predict", "--checkpoint", cifar_run / "best.pt", *photos, "--json")
    assert code == 0
    eager = json.loads(out)
    code, _, _ = run(capsys, "export", "--checkpoint", cifar_run / "best.pt", "--out", tmp_path / "m.onnx")
    code, out, _ = run(capsys, "predict", "--onnx", tmp_path / "m.onnx", *photos, "--json")
    assert code == 0
    onnx = json.loads(out)
    for a, b in zip(eager, onnx):
        assert [name for name, _ in a["top"]] == [name for name, _ in b["top"]]
        assert a["top"][0][1] == pytest.approx(b["top"][0][1], abs=1e-4)


def test_predict_converts_images_to_the_models_channels(tmp_path):
    from mobilenets.predict import default_data_info, predict_images

    model = mobilenets.create_model("mobilenet_v1", width_mult=0.25, num_classes=3, in_channels=1, resolution=64)
    Image.new("L", (80, 60), 128).save(tmp_path / "gray.png")
    Image.new("RGB", (50, 70), (10, 200, 30)).save(tmp_path / "colour.png")
    results = predict_images(model, [tmp_path / "gray.png", tmp_path / "colour.png"], default_data_info(model), top=2)
    assert [len(r) for r in results] == [2, 2]


def test_decoupled_torchvision_model_saves_safely_and_reloads(capsys, tmp_path):
    torch.manual_seed(0)
    code, out, _ = run(capsys, "decouple", "--model", "torchvision.resnet18", "--num-classes", "10", "--rank", "4",
                       "--resolution", "64", "--out", tmp_path / "nd")  # fmt: skip
    assert code == 0 and not (tmp_path / "nd" / "model.pt").exists()
    assert "{" not in out.split("params\n")[-1]  # extras read as text, not Python dicts
    model = mobilenets.load_model(tmp_path / "nd" / "model.safetensors")
    assert isinstance(model, torchvision.models.ResNet) and model.arch["converted"][0]["method"] == "decouple"
    x = torch.randn(2, 3, 64, 64)
    again = mobilenets.load_model(tmp_path / "nd" / "model.safetensors")
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


@pytest.mark.parametrize("method", ["spatial", "channel", "tucker", "channel+decouple"])
def test_converted_models_reload_exactly(method, tmp_path):
    """Every conversion records its steps; load_model rebuilds the registry model, and
    load_weights rebuilds a network outside the registry from its original structure."""
    torch.manual_seed(0)
    calibrated = method.startswith("channel")  # the calibrated channel layers carry an extra bias
    model = mobilenets.create_model("vgg16", cifar=True, width_mult=0.25, num_classes=10).eval()
    calibration = torch.randn(16, 3, 32, 32) if calibrated else None
    converted, _ = mobilenets.decompose(model, method, target_reduction=2, calibration=calibration)
    mobilenets.save_weights(converted, tmp_path / "c.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(converted.eval()(x), mobilenets.load_model(tmp_path / "c.safetensors")(x))
    plain = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)).eval()
    calibration = torch.randn(8, 3, 16, 16) if calibrated else None
    converted, _ = mobilenets.decompose(
        plain, method, target_reduction=2, input_size=(3, 16, 16), calibration=calibration
    )
    mobilenets.save_weights(converted, tmp_path / "p.safetensors")
    fresh = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    rebuilt = mobilenets.load_weights(fresh, tmp_path / "p.safetensors").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(converted.eval()(x), rebuilt(x))


def test_full_rank_decoupling_is_exact_with_mixed_kernel_sizes():
    """rank="full" gives each layer its own k^2 terms: ResNet-18's 7x7 stem and 3x3 convs alike."""
    torch.manual_seed(0)
    model = mobilenets.create_model("torchvision.resnet18", num_classes=10).eval()
    exact, report = mobilenets.decouple(model, rank="full", replace_all=True, input_size=(3, 64, 64))
    assert {layer.rank for layer in report.layers} == {9, 49}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        assert (exact.eval()(x) - reference).norm() / reference.norm() < 1e-4


def test_decouple_takes_a_calibration_folder(shared_data):
    model = mobilenets.create_model("vgg16", cifar=True, width_mult=0.25, num_classes=10).eval()
    _, report = mobilenets.decouple(model, target_reduction=2, calibration=shared_data / "cifar10" / "test" / "cat")
    assert report.refined


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_follow_the_umask(umask, tmp_path):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "f.json", lambda tmp: open(tmp, "w").write("{}"))
        mobilenets.save_weights(nn.Linear(2, 2), tmp_path / "w.safetensors")
    finally:
        os.umask(old)
    for name in ("f.json", "w.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_profile_counts_attention_and_transposed_convs():
    """ViT-B/16: 17.56G mult-adds by the formula (projections 4*L*E^2 + attention 2*L^2*E per block,
    L = 197 tokens, E = 768, 12 blocks, plus the patch embedding, MLPs and head)."""
    vit = torchvision.models.vit_b_16()
    counted = mobilenets.profile(vit, 224)
    tokens, width, blocks = 197, 768, 12
    attention = blocks * (4 * tokens * width**2 + 2 * tokens**2 * width)
    mlp = blocks * 2 * tokens * width * 3072
    expected = attention + mlp + 196 * width * 3 * 16 * 16 + width * 1000
    assert counted.mult_adds == expected and not counted.uncounted
    up = nn.Sequential(nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1))
    assert mobilenets.profile(up, (8, 16, 16)).mult_adds == 16 * 16 * 8 * 4 * 4 * 4  # each input meets 4x4x4 weights

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(3, 3))

        def forward(self, x):
            return torch.einsum("nchw,cd->ndhw", x, self.weight)

    result = mobilenets.profile(nn.Sequential(Custom(), nn.Conv2d(3, 3, 1)), (3, 8, 8))
    assert result.uncounted == ["0 (Custom)"] and "lower bound" in result.table()
    assert json.loads(result.to_json())["uncounted"] == ["0 (Custom)"]


def test_a_one_class_dataset_warns(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "data" / split / "only").mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 32), (i * 60, 0, 0)).save(tmp_path / "data" / split / "only" / f"{i}.png")
    lines = []
    config = mobilenets.train.TrainConfig(
        model="mobilenet_v1", data_dir=str(tmp_path / "data"), out=str(tmp_path / "run"), width_mult=0.25,
        epochs=1, batch_size=4,
    )  # fmt: skip
    mobilenets.train.train(config, progress=False, log=lines.append)
    assert any("single class" in line and "100%" in line for line in lines)
