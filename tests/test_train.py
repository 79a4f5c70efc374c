"""Training: exact resume, recipes, bad data.  Tiny slices of the real CIFAR-10."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from mobilenets.data import CIFAR_MEAN, CIFAR_STD, DataError, build_datasets
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
    # NHWC is the CPU default, and recorded as what the run used
    assert json.loads((tmp_path / "config.json").read_text())["config"]["channels_last"] is True
    with pytest.raises(Exception, match="different settings"):
        train(config(shared_data, tmp_path, width_mult=0.5), progress=False, log=lambda *_: None)
    # the epochs set the schedule: more of them is another run (the config.json is left as it was)
    with pytest.raises(Exception, match="different settings.*epochs"):
        train(config(shared_data, tmp_path, epochs=2), progress=False, log=lambda *_: None)
    # the memory format is how a run is carried out, not what it computes: it may change on resuming
    train(config(shared_data, tmp_path, epochs=1, channels_last=False), progress=False, log=lambda *_: None)
    assert json.loads((tmp_path / "config.json").read_text())["config"]["channels_last"] is False
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


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


def test_resume_from_the_middle_of_an_epoch(shared_data, tmp_path):
    quiet = dict(progress=False, log=lambda *_: None)
    straight = train(config(shared_data, tmp_path / "a"), **quiet)
    # 4 steps per epoch: stop after step 2 of epoch 2, then run the same command again.
    assert train(config(shared_data, tmp_path / "b"), stop_after_steps=6, **quiet) is None
    state = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 2)
    resumed = train(config(shared_data, tmp_path / "b"), **quiet)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    assert straight["top1"] == resumed["top1"]
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


def test_augmentation_does_not_depend_on_the_number_of_workers(shared_data, tmp_path):
    from mobilenets.data import ResumableSampler, SeededDataset, make_loader

    train_set, _, _ = build_datasets(shared_data / "cifar10", style="cifar", resolution=32, train_subset=40)
    batches = []
    for workers in (0, 2):
        seeded = SeededDataset(train_set, seed=3)
        seeded.epoch = 5
        sampler = ResumableSampler(seeded, seed=3)
        sampler.set_epoch(5)
        batches.append(next(iter(make_loader(seeded, 16, workers=workers, sampler=sampler)))[0])
    assert torch.equal(batches[0], batches[1])
    # Each epoch draws new crops and flips for the same image.
    seeded = SeededDataset(train_set, seed=3)
    views = []
    for epoch in (0, 1):
        seeded.epoch = epoch
        views.append(seeded[0][0])
    assert not torch.equal(views[0], views[1])
    seeded.epoch = 0
    assert torch.equal(seeded[0][0], views[0])


def test_learning_rate_schedules():
    from mobilenets.train import lr_factor

    quick = RECIPES["cifar10-quick"].override(epochs=4, warmup_epochs=1.0)
    f = lr_factor(quick, steps_per_epoch=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)  # linear warm-up over epoch 1
    assert f(10) == pytest.approx(1.0) and f(25) == pytest.approx(0.5) and f(40) == pytest.approx(0.0)
    v2 = lr_factor(RECIPES["imagenet-v2"], steps_per_epoch=10)
    assert v2(9) == 1.0 and v2(10) == pytest.approx(0.98) and v2(35) == pytest.approx(0.98**3)
    # one-cycle: up over the warm-up, a straight line down to zero, then held there
    cycle = lr_factor(quick.override(schedule="onecycle", decay_epochs=3), steps_per_epoch=10)
    assert cycle(9) == pytest.approx(1.0) and cycle(20) == pytest.approx(0.5) and cycle(30) == cycle(39) == 0.0
    # cosine decayed until epoch 3 of 4 is PyTorch's CosineAnnealingLR(T_max=3 epochs), stepped per step,
    # turning back up afterwards as pytorch-cifar's code does when trained past T_max
    seed = lr_factor(RECIPES["cifar10"].override(epochs=4, decay_epochs=3), steps_per_epoch=10)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=30)
    for step in range(40):
        assert seed(step) == pytest.approx(optimizer.param_groups[0]["lr"], abs=1e-9), step
        optimizer.step()
        reference.step()
    assert seed(30) == pytest.approx(0.0) and seed(39) > 0.2


def test_data_kept_on_the_device_matches_the_cpu_pipeline(shared_data):
    from mobilenets.data import DeviceResidentLoader, ResumableSampler, make_loader

    _, val_set, _ = build_datasets(shared_data / "cifar10", style="cifar", resolution=32, val_subset=20)
    resident = DeviceResidentLoader(val_set, 20, None, device="cpu", resolution=32, augment=False)
    on_device, labels = next(iter(resident))
    on_cpu, cpu_labels = next(iter(make_loader(val_set, 20, workers=0)))
    assert torch.equal(labels, cpu_labels)
    torch.testing.assert_close(on_device, on_cpu, atol=1e-5, rtol=0)
    # Augmented: every image is a zero-padded shift (up to 4 px) of the original, maybe mirrored.
    sampler = ResumableSampler(val_set, shuffle=False)
    augmented, _ = next(iter(DeviceResidentLoader(val_set, 20, sampler, device="cpu", resolution=32, augment=True)))
    padded = torch.nn.functional.pad(
        on_cpu * torch.tensor(CIFAR_STD).view(3, 1, 1) + torch.tensor(CIFAR_MEAN).view(3, 1, 1), (4, 4, 4, 4)
    )
    raw_aug = augmented * torch.tensor(CIFAR_STD).view(3, 1, 1) + torch.tensor(CIFAR_MEAN).view(3, 1, 1)
    for image, source in zip(raw_aug, padded):
        candidates = [source[:, y : y + 32, x : x + 32] for y in range(9) for x in range(9)]
        candidates += [c.flip(2) for c in candidates]
        assert min((image - c).abs().max().item() for c in candidates) < 1e-5


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(shared_data, tmp_path):
    from mobilenets.train import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="intact"):
        train(config(shared_data, tmp_path, lr=1e12, checkpoint_every=1), progress=False, log=lambda *_: None)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_eval_refuses_a_dataset_with_another_class_count(shared_data, tmp_path):
    from mobilenets.cli import main

    train(config(shared_data, tmp_path / "run", epochs=1), progress=False, log=lambda *_: None)
    make_tree(tmp_path / "two")  # 2 classes; the checkpoint has 10
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--data-dir", str(tmp_path / "two")]) == 2


def test_the_v2_papers_figure_6_ablations_train(shared_data, tmp_path):
    """--nonlinear-bottleneck and --no-shortcuts reach the network that is trained and saved."""
    import mobilenets

    out = tmp_path / "ablation"
    summary = train(
        config(shared_data, out, epochs=1, linear_bottleneck=False, residual=False), progress=False, log=lambda *_: None
    )
    model = mobilenets.load_model(out / "best.pt")
    assert (model.arch["linear_bottleneck"], model.arch["residual"]) == (False, False)
    reference = mobilenets.create_model("mobilenet_v2", num_classes=10, width_mult=0.35, cifar=True)
    assert summary["mult_adds"] == mobilenets.profile(reference, (3, 32, 32)).mult_adds  # same convs, other wiring
    shortcuts = [block.use_residual for block in model.modules() if hasattr(block, "use_residual")]
    assert shortcuts and not any(shortcuts)
    assert any(block.use_residual for block in reference.modules() if hasattr(block, "use_residual"))


def test_flip_evaluation_averages_each_image_with_its_mirror():
    from mobilenets.classification.evaluate import evaluate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5)).eval()
    images, labels = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    loader = [(images[:4], labels[:4]), (images[4:], labels[4:])]
    with torch.no_grad():
        averaged = (model(images) + model(images.flip(-1))) / 2
        plain = model(images)
    flipped = evaluate(model, loader, 5, flip=True)
    assert flipped["loss"] == pytest.approx(torch.nn.functional.cross_entropy(averaged, labels).item(), rel=1e-6)
    assert flipped["top1"] == pytest.approx((averaged.argmax(1) == labels).float().mean().item())
    assert evaluate(model, loader, 5)["loss"] == pytest.approx(
        torch.nn.functional.cross_entropy(plain, labels).item(), rel=1e-6
    )


def test_tied_logits_share_the_hit_and_untied_ones_score_as_topk():
    """An int8 file's logits tie: a tie at the k-th place counts as the label's share of the tied places,
    whatever order topk would put them in; without ties the counts are topk's, top-1 to top-5."""
    from mobilenets.classification.evaluate import evaluate, top_k_hits

    torch.manual_seed(0)
    logits, labels = torch.randn(64, 10), torch.randint(0, 10, (64,))
    for k in (1, 3, 5):
        expected = (logits.topk(k, dim=1).indices == labels[:, None]).any(1).double()
        assert torch.equal(top_k_hits(logits, labels, k), expected)
    tied = torch.tensor([[1.0, 3, 3, 0], [5, 3, 3, 3], [1, 1, 1, 1], [float("nan"), 1, 2, 3]])
    labels = torch.tensor([1, 2, 3, 1])
    assert top_k_hits(tied, labels, 1).tolist() == [0.5, 0.0, 0.25, 0.0]
    assert top_k_hits(tied, labels, 2).tolist() == pytest.approx([1.0, 1 / 3, 0.5, 0.0])
    metrics = evaluate(lambda images: images, [(tied[:3], labels[:3])], 4)  # the "model" hands the logits on
    assert metrics["top1"] == pytest.approx(0.75 / 3) and metrics["per_class_top1"][1:] == [0.5, 0.0, 0.25]


def test_fast_training_options_reach_the_run(shared_data, tmp_path, monkeypatch):
    """--schedule onecycle, --compile-mode (CUDA graphs on a GPU), --test-flip and the wall-clock record."""
    import mobilenets
    from mobilenets.classification.evaluate import evaluate
    from mobilenets.data import make_loader

    modes = []

    def fake_compile(module, mode=None):  # compiling on CPU takes minutes; what matters is what is asked for
        modes.append(mode)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    run = config(shared_data, tmp_path / "fast", epochs=2, schedule="onecycle", warmup_epochs=1.0,
                 compile_mode="reduce-overhead", test_flip=True)  # fmt: skip
    summary = train(run, progress=False, log=lambda *_: None)
    assert modes == ["reduce-overhead"]
    history = [json.loads(line) for line in (tmp_path / "fast" / "metrics.jsonl").read_text().splitlines()]
    assert history[0]["lr"] == pytest.approx(0.1)  # the peak after the 1-epoch ramp up ... then a line down to zero
    assert history[1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert 0 < history[0]["wall_seconds"] < history[1]["wall_seconds"] == summary["wall_seconds"]
    assert history[1]["wall_seconds"] > sum(h["train_seconds"] for h in history)  # set-up and validation too
    # the recorded validation is the flipped one
    # (in the run's memory format: NHWC, the CPU default)
    model = mobilenets.load_model(tmp_path / "fast" / "last.pt").to(memory_format=torch.channels_last)
    _, val_set, _ = build_datasets(shared_data / "cifar10", style="cifar", resolution=32, val_subset=40)
    loader = make_loader(val_set, 32, workers=0)
    # (the same batches in the same order: bit for bit; an untrained model's outputs vary little with the image)
    assert evaluate(model, loader, 10, flip=True, channels_last=True)["loss"] == history[1]["loss"]
    assert evaluate(model, loader, 10, channels_last=True)["loss"] != history[1]["loss"]


def test_loader_workers_default_to_none_on_the_cpu(shared_data, tmp_path, monkeypatch):
    """On the CPU, worker processes only take cores from the training (docs/benchmarks.md, "Loader
    workers on the CPU"): none unless asked for; a number given is kept."""
    import mobilenets.train.loop as loop

    asked, real = [], loop.make_loader

    def recording(*args, workers, **kwargs):
        asked.append(workers)
        return real(*args, workers=workers, **kwargs)

    monkeypatch.setattr(loop, "make_loader", recording)
    for workers, expected in ((None, 0), (1, 1)):
        asked.clear()
        train(config(shared_data, tmp_path / str(workers), epochs=1, workers=workers), progress=False,
              log=lambda *_: None)  # fmt: skip
        assert asked == [expected, expected]  # the training and the validation loader
