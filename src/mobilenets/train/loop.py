"""The training and evaluation loop, with atomic checkpoints and exact resume.

A run directory (``--out``) holds ``config.json`` (the resolved settings),
``last.pt`` (written atomically after every epoch), ``best.pt`` (best validation
top-1) and ``metrics.jsonl`` (one line per epoch).  Re-running the same command
in the same directory continues from ``last.pt``: the model, optimizer,
scheduler and RNG states are restored and every epoch's data order is seeded by
(seed, epoch), so the resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..cost import profile
from ..cost.latency import measure_latency
from ..data import build_datasets
from ..errors import ConfigError, MobileNetsError
from ..models import create_model
from ..weights import atomic_write
from .recipes import Recipe, get_recipe

__all__ = ["TrainConfig", "TrainingDiverged", "evaluate", "train"]


class TrainingDiverged(MobileNetsError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


@dataclass
class TrainConfig:
    model: str
    data_dir: str
    out: str
    recipe: str = "cifar10"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    width_mult: float = 1.0
    resolution: int | None = None
    activation: str | None = None
    dataset: str | None = None
    download: bool = False
    train_subset: int | None = None
    val_subset: int | None = None
    workers: int = 0
    seed: int = 0
    device: str = "cpu"

    def resolved_recipe(self) -> Recipe:
        return get_recipe(self.recipe).override(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay
        )


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
    if recipe.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            model.parameters(),
            lr=recipe.lr,
            alpha=recipe.rmsprop_decay,
            eps=recipe.rmsprop_eps,
            momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
        )
    raise ConfigError(f"unknown optimizer {recipe.optimizer!r}")


def _scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.LRScheduler:
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs)
    if recipe.schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=recipe.lr_decay)
    raise ConfigError(f"unknown schedule {recipe.schedule!r}")


def _loader(dataset, batch_size: int, *, shuffle: bool, workers: int, generator=None) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=generator,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        drop_last=False,
    )


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, num_classes: int, device: str = "cpu") -> dict[str, Any]:
    """Top-1, top-5, mean loss, per-class top-1 and images/s over ``loader``."""
    model.eval()
    correct1 = correct5 = total = 0
    loss_sum = 0.0
    per_class_correct = torch.zeros(num_classes, dtype=torch.long)
    per_class_total = torch.zeros(num_classes, dtype=torch.long)
    start = time.perf_counter()
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        top = logits.topk(min(5, num_classes), dim=1).indices
        hit1 = top[:, 0] == labels
        correct1 += hit1.sum().item()
        correct5 += (top == labels[:, None]).any(dim=1).sum().item()
        total += labels.numel()
        per_class_total += torch.bincount(labels.cpu(), minlength=num_classes)
        per_class_correct += torch.bincount(labels.cpu()[hit1.cpu()], minlength=num_classes)
    elapsed = time.perf_counter() - start
    if total == 0:
        raise ConfigError("the validation set is empty")
    return {
        "top1": correct1 / total,
        "top5": correct5 / total,
        "loss": loss_sum / total,
        "per_class_top1": (per_class_correct / per_class_total.clamp(min=1)).tolist(),
        "images_per_s": total / elapsed,
        "samples": total,
    }


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"0" * 65536)  # also fails early on a full disk
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to --out {out}: {exc}") from exc


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def train(config: TrainConfig, *, progress: bool = True, log=print, stop_after: int | None = None) -> dict[str, Any]:
    """Train ``config.model`` with its recipe; resume from ``out/last.pt`` if present.

    ``stop_after`` ends this call after that many epochs in total, as an
    interruption would; calling again with the same config continues the run.
    """
    out = Path(config.out)
    _check_writable(out)
    recipe = config.resolved_recipe()
    resolution = config.resolution or (32 if recipe.transforms == "cifar" else 224)
    train_set, val_set, classes = build_datasets(
        config.data_dir,
        style=recipe.transforms,
        resolution=resolution,
        dataset=config.dataset,
        download=config.download,
        train_subset=config.train_subset,
        val_subset=config.val_subset,
        seed=config.seed,
    )
    resolved = {"config": asdict(config), "recipe": asdict(recipe), "resolution": resolution, "classes": classes}

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    options: dict[str, Any] = {"resolution": resolution}
    if recipe.cifar_strides:
        options["cifar"] = True
    if config.activation:
        options["activation"] = config.activation
    model = create_model(config.model, num_classes=len(classes), width_mult=config.width_mult, **options)
    model.to(config.device)
    optimizer = _optimizer(model, recipe)
    scheduler = _scheduler(optimizer, recipe)
    history: list[dict[str, Any]] = []
    start_epoch, best_top1 = 0, -1.0

    last_path = out / "last.pt"
    if last_path.exists():
        state = torch.load(last_path, map_location=config.device, weights_only=True)
        if state["resolved"]["config"] | {"epochs": None} != resolved["config"] | {"epochs": None} or {
            k: v for k, v in state["resolved"]["recipe"].items() if k != "epochs"
        } != {k: v for k, v in resolved["recipe"].items() if k != "epochs"}:
            raise ConfigError(f"{out} holds a run with different settings; use another --out to start a new run")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(_to_random_state(state["python_rng"]))
        start_epoch, best_top1, history = state["epoch"], state["best_top1"], state["history"]
        log(f"resuming {out} after epoch {start_epoch}")
    atomic_write(out / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(resolved, indent=2)))

    val_loader = _loader(val_set, recipe.batch_size, shuffle=False, workers=config.workers)
    end_epoch = recipe.epochs if stop_after is None else min(stop_after, recipe.epochs)
    for epoch in range(start_epoch, end_epoch):
        # The data order of every epoch depends on (seed, epoch) only: resumable.
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        train_loader = _loader(train_set, recipe.batch_size, shuffle=True, workers=config.workers, generator=generator)
        model.train()
        loss_sum, seen, started = 0.0, 0, time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=not progress, leave=False)
        for images, labels in bar:
            images, labels = images.to(config.device), labels.to(config.device)
            loss = F.cross_entropy(model(images), labels, label_smoothing=recipe.label_smoothing)
            if not math.isfinite(loss.item()):
                raise TrainingDiverged(
                    f"loss became {loss.item()} in epoch {epoch + 1}; the last good checkpoint "
                    f"({last_path if last_path.exists() else 'none yet'}) is intact - lower --lr and resume"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * labels.numel()
            seen += labels.numel()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", img_s=f"{seen / (time.perf_counter() - started):.0f}")
        scheduler.step()
        metrics = evaluate(model, val_loader, len(classes), config.device)
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "train_images_per_s": seen / (time.perf_counter() - started),
            "lr": optimizer.param_groups[0]["lr"],
            **{k: v for k, v in metrics.items() if k != "per_class_top1"},
        }
        history.append(record)
        log(
            f"epoch {epoch + 1}/{recipe.epochs}: train loss {record['train_loss']:.4f}, "
            f"val top-1 {100 * metrics['top1']:.2f}%, top-5 {100 * metrics['top5']:.2f}%"
        )
        state = {
            "model": model.state_dict(),
            "arch": model.arch,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": _from_random_state(random.getstate()),
            "epoch": epoch + 1,
            "best_top1": max(best_top1, metrics["top1"]),
            "history": history,
            "resolved": resolved,
        }
        _save_checkpoint(last_path, state)
        if metrics["top1"] > best_top1:
            best_top1 = metrics["top1"]
            _save_checkpoint(out / "best.pt", state)
        lines = "".join(json.dumps(h) + "\n" for h in history)
        atomic_write(out / "metrics.jsonl", lambda tmp: Path(tmp).write_text(lines))

    model.eval()
    cost = profile(model, (model.in_channels, resolution, resolution))
    latency = measure_latency(model.cpu(), resolution)
    final = history[-1] if history else {}
    summary = {
        "model": config.model,
        "epochs": recipe.epochs,
        "top1": final.get("top1"),
        "top5": final.get("top5"),
        "best_top1": best_top1,
        "mult_adds": cost.mult_adds,
        "params": cost.params,
        "latency_ms_batch1_cpu": latency,
        "out": str(out),
    }
    atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
    return summary


# Python's random state holds a tuple; checkpoints loaded with weights_only=True
# accept lists and ints, so it is stored as lists.
def _from_random_state(state: tuple) -> list:
    return [state[0], list(state[1]), state[2]]


def _to_random_state(state: list) -> tuple:
    return (state[0], tuple(state[1]), state[2])
