"""Datasets and transforms: CIFAR-10/100 through torchvision, any ImageFolder tree.

``build_datasets(data_dir, ...)`` detects what ``data_dir`` holds:

* an ImageFolder tree, ``train/<class>/*`` plus ``val/`` or ``test/`` (ImageNet-style
  data, the shared CIFAR-10 copy, users' own images);
* torchvision's CIFAR-10/100 files (``cifar-10-batches-py``/``cifar-100-python``),
  downloaded by torchvision itself when ``download=True``.

Images are always converted to RGB (grayscale, palette and RGBA files included);
a file that cannot be decoded raises :class:`DataError` naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets
from torchvision.transforms import v2 as T

from .errors import MobileNetsError

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "DataError", "IMAGENET_MEAN", "IMAGENET_STD", "build_datasets", "transforms_for"]

# The reviewed CIFAR experiment's normalisation (and pytorch-cifar's).
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DataError(MobileNetsError, ValueError):
    """Data that cannot be used as given (missing split, empty class, corrupt file)."""


def load_rgb(path: str):
    """Open any image file as RGB; corrupt files raise :class:`DataError` naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def transforms_for(style: str, resolution: int, *, train: bool) -> T.Compose:
    """The papers' preprocessing.

    ``cifar``: RandomCrop(padding 4) + flip for training, CIFAR mean/std.
    ``imagenet``: RandomResizedCrop + flip for training; resize to
    ``resolution / 0.875`` and center-crop for evaluation; ImageNet mean/std.
    """
    to_tensor = [T.ToImage(), T.ToDtype(torch.float32, scale=True)]
    if style == "cifar":
        resize = [] if resolution == 32 else [T.Resize(resolution)]
        augment = [T.RandomCrop(resolution, padding=4 * resolution // 32), T.RandomHorizontalFlip()] if train else []
        return T.Compose([*to_tensor, *resize, *augment, T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    if style == "imagenet":
        if train:
            geometry = [T.RandomResizedCrop(resolution, antialias=True), T.RandomHorizontalFlip()]
        else:
            geometry = [T.Resize(int(round(resolution / 0.875)), antialias=True), T.CenterCrop(resolution)]
        return T.Compose([*to_tensor, *geometry, T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    raise DataError(f"unknown transform style {style!r}; use 'cifar' or 'imagenet'")


def balanced_subset(dataset: Dataset, size: int | None, targets: list[int], seed: int) -> Dataset:
    """A fixed, class-balanced slice of ``size`` samples (``None``: everything)."""
    if size is None or size >= len(targets):
        return dataset
    if size < 1:
        raise DataError(f"subset size must be positive, got {size}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(targets), generator=generator).tolist()
    num_classes = max(targets) + 1
    per_class = [size // num_classes + (1 if c < size % num_classes else 0) for c in range(num_classes)]
    chosen = []
    for index in order:
        label = targets[index]
        if per_class[label] > 0:
            per_class[label] -= 1
            chosen.append(index)
    return Subset(dataset, sorted(chosen))


def _image_folder(root: Path, transform: Any) -> datasets.ImageFolder:
    try:
        return datasets.ImageFolder(str(root), transform=transform, loader=load_rgb)
    except FileNotFoundError as exc:
        raise DataError(f"{root}: {exc} (each class needs its own folder with at least one image)") from exc


def detect_layout(data_dir: Path, dataset: str | None = None) -> str:
    """``imagefolder``, ``cifar10`` or ``cifar100`` for what ``data_dir`` holds."""
    if dataset in ("cifar10", "cifar100"):
        return dataset
    if (data_dir / "train").is_dir() and any((data_dir / s).is_dir() for s in ("val", "test")):
        return "imagefolder"
    if (data_dir / "cifar-10-batches-py").is_dir():
        return "cifar10"
    if (data_dir / "cifar-100-python").is_dir():
        return "cifar100"
    raise DataError(
        f"{data_dir} holds no dataset: expected train/ and val/ (or test/) class folders, or "
        "torchvision's CIFAR files (pass --dataset cifar10 --download to fetch them)"
    )


def build_datasets(
    data_dir: str | Path,
    *,
    style: str,
    resolution: int,
    dataset: str | None = None,
    download: bool = False,
    train_subset: int | None = None,
    val_subset: int | None = None,
    seed: int = 0,
) -> tuple[Dataset, Dataset, list[str]]:
    """Training and validation datasets and the class names."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir() and not download:
        raise DataError(f"data directory not found: {data_dir}")
    layout = detect_layout(data_dir, dataset) if data_dir.is_dir() else (dataset or "cifar10")
    train_tf = transforms_for(style, resolution, train=True)
    eval_tf = transforms_for(style, resolution, train=False)
    if layout == "imagefolder":
        val_dir = data_dir / "val" if (data_dir / "val").is_dir() else data_dir / "test"
        train, val = _image_folder(data_dir / "train", train_tf), _image_folder(val_dir, eval_tf)
        if train.classes != val.classes:
            raise DataError(f"train/ and {val_dir.name}/ have different class folders")
        classes, train_targets, val_targets = train.classes, train.targets, val.targets
    else:
        cls = datasets.CIFAR10 if layout == "cifar10" else datasets.CIFAR100
        try:
            train = cls(str(data_dir), train=True, transform=train_tf, download=download)
            val = cls(str(data_dir), train=False, transform=eval_tf, download=download)
        except RuntimeError as exc:
            raise DataError(f"{exc} (in {data_dir}; pass --download to fetch it)") from exc
        classes, train_targets, val_targets = train.classes, list(train.targets), list(val.targets)
    return (
        balanced_subset(train, train_subset, train_targets, seed),
        balanced_subset(val, val_subset, val_targets, seed + 1),
        list(classes),
    )
