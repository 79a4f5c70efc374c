"""Training: exact resume, recipes, bad data.  Tiny slices of the real CIFAR-10."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from mobilenets.data import DataError, build_datasets
from mobilenets.train import RECIPES, TrainConfig, train


def config(shared_data, out, **changes):
    settings = dict(
        model="mobilenet_v2",
        data_dir=str(shared_data / "cifar10"),
        out=str(out),
        width_mult=0.35,
        train_subset=120,
        val_subset=40,
        batch_size=32,
        epochs=2,
        workers=0,
    )
    settings.update(changes)
    return TrainConfig(**settings)


def test_recipes_carry_the_papers_settings():
    cifar = RECIPES["cifar10"]
    assert (cifar.optimizer, cifar.lr, cifar.momentum, cifar.weight_decay, cifar.batch_size, cifar.schedule) == (
        "sgd", 0.1, 0.9, 5e-4, 128, "cosine"
    )  # fmt: skip
    v2 = RECIPES["imagenet-v2"]
    assert (v2.optimizer, v2.lr, v2.rmsprop_decay, v2.momentum, v2.weight_decay, v2.lr_decay, v2.batch_size) == (
        "rmsprop", 0.045, 0.9, 0.9, 4e-5, 0.98, 96
    )  # fmt: skip


def test_resume_reproduces_an_uninterrupted_run(shared_data, tmp_path):
    straight = train(config(shared_data, tmp_path / "a"), progress=False, log=lambda *_: None)
    # The same run interrupted after epoch 1, then the same command again.
    train(config(shared_data, tmp_path / "b"), progress=False, log=lambda *_: None, stop_after=1)
    resumed_log = []
    resumed = train(config(shared_data, tmp_path / "b"), progress=False, log=resumed_log.append)
    assert any("resuming" in line for line in resumed_log)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert straight["top1"] == resumed["top1"]
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert not list((tmp_path / "b").glob("*.tmp"))


def test_resume_refuses_a_different_run(shared_data, tmp_path):
    train(config(shared_data, tmp_path, epochs=1), progress=False, log=lambda *_: None)
    with pytest.raises(Exception, match="different settings"):
        train(config(shared_data, tmp_path, width_mult=0.5), progress=False, log=lambda *_: None)


def test_class_balanced_subset(shared_data):
    train_set, val_set, classes = build_datasets(
        shared_data / "cifar10", style="cifar", resolution=32, train_subset=50, val_subset=20
    )
    labels = [train_set.dataset.targets[i] for i in train_set.indices]
    assert len(classes) == 10 and len(labels) == 50 and all(labels.count(c) == 5 for c in range(10))
    assert train_set[0][0].shape == (3, 32, 32)


def make_tree(root, image_mode="RGB"):
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            folder = root / split / name
            folder.mkdir(parents=True)
            Image.new(image_mode, (40, 40)).save(folder / "a.png")


def test_grayscale_and_rgba_images_are_converted(tmp_path):
    make_tree(tmp_path / "gray", "L")
    train_set, _, _ = build_datasets(tmp_path / "gray", style="imagenet", resolution=32)
    assert train_set[0][0].shape == (3, 32, 32)
    make_tree(tmp_path / "rgba", "RGBA")
    train_set, _, _ = build_datasets(tmp_path / "rgba", style="imagenet", resolution=32)
    assert train_set[0][0].shape == (3, 32, 32)


def test_corrupt_image_names_the_file(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    train_set, _, _ = build_datasets(tmp_path, style="imagenet", resolution=32)
    with pytest.raises(DataError, match="broken.jpg"):
        [train_set[i] for i in range(len(train_set))]


def test_missing_or_empty_data(tmp_path):
    with pytest.raises(DataError, match="not found"):
        build_datasets(tmp_path / "nowhere", style="cifar", resolution=32)
    with pytest.raises(DataError, match="holds no dataset"):
        build_datasets(tmp_path, style="cifar", resolution=32)
    make_tree(tmp_path / "tree")
    (tmp_path / "tree" / "train" / "empty").mkdir()
    with pytest.raises(DataError, match="at least one image"):
        build_datasets(tmp_path / "tree", style="imagenet", resolution=32)
