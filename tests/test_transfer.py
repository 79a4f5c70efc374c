"""Transfer learning: pretrained starts (torchvision's and our layouts, converted models),
a slower or frozen body, distillation (the loss by hand, exact resume, unlabelled images)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import mobilenets
from mobilenets.errors import ConfigError, WeightsError
from mobilenets.train import train
from mobilenets.train.transfer import UNLABELLED, distillation_loss, head_parameter_names
from mobilenets.weights import load_pretrained

from .conftest import TORCHVISION_V2_WEIGHTS
from .test_train import config as base_config

QUIET = {"progress": False, "log": lambda *_: None}


def config(shared_data, out, **changes):
    settings = {"train_subset": 40, "val_subset": 20, "batch_size": 20, "epochs": 1, **changes}
    return base_config(shared_data, out, **settings)


def test_torchvision_weights_start_a_ten_class_model():
    if not TORCHVISION_V2_WEIGHTS.is_file():
        pytest.skip("torchvision MobileNetV2 weights not in shared data")
    torch.manual_seed(0)
    model = mobilenets.create_model("mobilenet_v2", num_classes=10)
    fresh_head = model.classifier[1].weight.detach().clone()
    model, loaded, new = load_pretrained(model, TORCHVISION_V2_WEIGHTS, head=head_parameter_names(model))
    assert new == ["classifier.1.weight", "classifier.1.bias"] and len(loaded) == 312
    published = torch.load(TORCHVISION_V2_WEIGHTS, weights_only=True)
    assert torch.equal(model.features[0][0].weight, published["features.0.0.weight"])  # body: the file's
    assert torch.equal(model.features[18][1].running_var, published["features.18.1.running_var"])
    assert torch.equal(model.classifier[1].weight, fresh_head)  # head: its own initialisation
    # a width the file was not saved at is still an error naming the keys
    narrow = mobilenets.create_model("mobilenet_v2", num_classes=10, width_mult=0.5)
    with pytest.raises(WeightsError, match="mis-shaped keys"):
        load_pretrained(narrow, TORCHVISION_V2_WEIGHTS, head=head_parameter_names(narrow))


def test_heads_of_foreign_networks():
    vgg = mobilenets.create_model("torchvision.vgg11", num_classes=3)
    assert head_parameter_names(vgg) == ["classifier.6.weight", "classifier.6.bias"]
    resnet = mobilenets.create_model("torchvision.resnet18", num_classes=3)
    assert head_parameter_names(resnet) == ["fc.weight", "fc.bias"]
    with pytest.raises(ConfigError, match="no fully connected classifier"):
        head_parameter_names(nn.Sequential(nn.Conv2d(3, 4, 3)))
    assert head_parameter_names(nn.Sequential(nn.Conv2d(3, 4, 3)), required=False) == []


def test_distillation_loss_by_hand():
    student = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    teacher = torch.tensor([[1.0, 1.5, -0.5], [0.5, 0.0, 2.0]])
    labels = torch.tensor([0, UNLABELLED])
    w, t = 0.3, 2.0

    def softmax(row):
        exps = [math.exp(v / t) for v in row]
        return [e / sum(exps) for e in exps]

    def kl(p, q):
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))

    ce0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.5) + math.exp(-1.0)))
    soft = [t * t * kl(softmax(tr), softmax(sr)) for tr, sr in zip(teacher.tolist(), student.tolist())]
    expected = ((1 - w) * ce0 + w * soft[0] + soft[1]) / 2  # the unlabelled image: the teacher term alone
    got = distillation_loss(student, teacher, labels, weight=w, temperature=t)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # without a teacher it is the plain cross-entropy
    plain = distillation_loss(student, None, torch.tensor([0, 2]), weight=w, temperature=t)
    assert plain.item() == pytest.approx(F.cross_entropy(student, torch.tensor([0, 2])).item())


def test_body_learns_slower_or_not_at_all(shared_data, tmp_path):
    """A frozen body keeps its weights and BN statistics for the first epoch, the head moves;
    then the body trains at body_lr_mult x the rate."""
    teacher_run = tmp_path / "base"
    train(config(shared_data, teacher_run), **QUIET)
    start = torch.load(teacher_run / "last.pt", weights_only=True)["model"]
    out = tmp_path / "frozen"
    train(config(shared_data, out, init_from=str(teacher_run / "best.pt"), freeze_body_epochs=1, body_lr_mult=0.5,
                 epochs=2), stop_after=1, **QUIET)  # fmt: skip
    state = torch.load(out / "last.pt", weights_only=True)
    after = state["model"]
    body = [k for k in after if not k.startswith("classifier") and "num_batches" not in k]
    assert all(torch.equal(after[k], start[k]) for k in body)
    assert not torch.equal(after["classifier.1.weight"], start["classifier.1.weight"])
    lrs = sorted({group["initial_lr"] for group in state["optimizer"]["param_groups"]})
    assert lrs == pytest.approx([0.05, 0.1])  # the cifar10 recipe's lr 0.1 for the head, half for the body
    train(config(shared_data, out, init_from=str(teacher_run / "best.pt"), freeze_body_epochs=1, body_lr_mult=0.5,
                 epochs=2), **QUIET)  # fmt: skip
    final = torch.load(out / "last.pt", weights_only=True)["model"]
    assert not torch.equal(final["features.0.conv.weight"], start["features.0.conv.weight"])


def test_frozen_layers_never_change_and_the_rest_trains(shared_data, tmp_path):
    """--freeze-layers N: features[:N] keep their weights and BN statistics for the whole run
    (no backward pass reaches them); the layers after them and the classifier train."""
    base = tmp_path / "base"
    train(config(shared_data, base), **QUIET)
    start = torch.load(base / "best.pt", weights_only=True)["model"]
    out = tmp_path / "frozen"
    train(config(shared_data, out, init_from=str(base / "best.pt"), freeze_layers=3), **QUIET)
    after = torch.load(out / "last.pt", weights_only=True)["model"]
    frozen = [k for k in after if k.startswith(("features.0.", "features.1.", "features.2."))]
    assert frozen and all(torch.equal(after[k], start[k]) for k in frozen if "num_batches" not in k)
    assert not torch.equal(after["features.3.project.conv.weight"], start["features.3.project.conv.weight"])
    assert not torch.equal(after["features.3.project.bn.running_mean"], start["features.3.project.bn.running_mean"])
    with pytest.raises(ConfigError, match="whole body"):
        train(config(shared_data, tmp_path / "all", freeze_layers=40), **QUIET)
    assert not (tmp_path / "all").exists()


def test_a_converted_model_can_be_fine_tuned(shared_data, tmp_path):
    model = mobilenets.create_model("vgg16", cifar=True, width_mult=0.25, num_classes=10)
    light, _ = mobilenets.decouple(model, target_reduction=2)
    mobilenets.save_weights(light, tmp_path / "nd.safetensors")
    out = tmp_path / "run"
    summary = train(
        config(shared_data, out, model="vgg16", width_mult=0.25, init_from=str(tmp_path / "nd.safetensors")), **QUIET
    )
    assert summary["mult_adds"] == mobilenets.profile(light, (3, 32, 32)).mult_adds
    reloaded = mobilenets.load_model(out / "best.pt")
    assert reloaded.arch["converted"][0]["method"] == "decouple"


@pytest.fixture(scope="module")
def teacher_file(shared_data, tmp_path_factory):
    """A 'teacher' of another architecture: a CIFAR ResNet-18 at width 0.25, one tiny epoch."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    train(config(shared_data, out, model="resnet18", width_mult=0.25), **QUIET)
    return out / "best.pt"


def test_distillation_resumes_exactly_and_refuses_another_teacher(shared_data, tmp_path, teacher_file):
    settings = {"teacher": str(teacher_file), "distill_weight": 0.7, "temperature": 3.0, "epochs": 2}
    straight = train(config(shared_data, tmp_path / "a", **settings), **QUIET)
    train(config(shared_data, tmp_path / "b", **settings), stop_after_steps=3, **QUIET)
    resumed = train(config(shared_data, tmp_path / "b", **settings), **QUIET)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a) and straight["top1"] == resumed["top1"]
    assert json.loads((tmp_path / "a" / "config.json").read_text())["teacher"]["sha256"]
    other = tmp_path / "other.pt"
    other.write_bytes(teacher_file.read_bytes() + b"")  # same content elsewhere: accepted
    train(config(shared_data, tmp_path / "b", **{**settings, "teacher": str(other)}), **QUIET)
    different = mobilenets.create_model("resnet18", cifar=True, width_mult=0.25, num_classes=10)
    mobilenets.save_weights(different, tmp_path / "different.safetensors")
    with pytest.raises(ConfigError, match="teacher"):
        train(config(shared_data, tmp_path / "b", **{**settings, "teacher": str(tmp_path / "different.safetensors")}),
              **QUIET)  # fmt: skip


def test_distillation_from_unlabelled_images(shared_data, tmp_path, teacher_file):
    folder = tmp_path / "unlabelled" / "any" / "layout"
    folder.mkdir(parents=True)
    for i, path in enumerate(sorted((shared_data / "cifar10" / "train" / "cat").glob("*.jpg"))[:24]):
        Image.open(path).save(folder / f"{i}.png")
    lines = []
    summary = train(
        config(shared_data, tmp_path / "run", teacher=str(teacher_file), unlabelled=str(tmp_path / "unlabelled"),
               batch_size=8),
        progress=False, log=lines.append,
    )  # fmt: skip
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary is not None and math.isfinite(metrics[0]["train_loss"])
    # 24 unlabelled images, batch 8: three steps (the 40 labelled ones are not used)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["scheduler"]["last_epoch"] == 3
    mixed = train(
        config(shared_data, tmp_path / "mixed", teacher=str(teacher_file), unlabelled=str(tmp_path / "unlabelled"),
               with_labelled=True, batch_size=8),
        **QUIET,
    )  # fmt: skip
    assert mixed is not None and (
        torch.load(tmp_path / "mixed" / "last.pt", weights_only=True)["scheduler"]["last_epoch"] == 8
    )  # (40 + 24) / 8


def test_head_protocol_names_and_replaces_the_last_layer_only():
    """get_classifier/reset_classifier (timm's protocol): the last fully connected layer, replaced
    for a new class count with the body and the rest of the head untouched; the saved architecture
    follows, so the file reloads as the new shape."""
    model = mobilenets.create_model("mobilenet_v3_small", resolution=64).eval()
    assert model.get_classifier() is model.classifier[3]
    body = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("classifier.3")}
    model.reset_classifier(7)
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 7) and model.arch["num_classes"] == 7
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in body.items())
    assert head_parameter_names(model) == ["classifier.3.weight", "classifier.3.bias"]
