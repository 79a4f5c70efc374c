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

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision import datasets
from torchvision.transforms import v2 as T
from tqdm.auto import tqdm

from .errors import DataError
from .extras import require

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataError",
    "DeviceResidentLoader",
    "ResumableSampler",
    "STYLES",
    "Preprocessing",
    "SeededDataset",
    "build_datasets",
    "calibration_images",
    "eval_dataset",
    "follow_path",
    "image_files",
    "make_loader",
    "mix_seed",
    "read_yaml_config",
    "transforms_for",
]

# The reviewed CIFAR experiment's normalisation (and pytorch-cifar's).
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_rgb(path: str):
    """Open any image file as 8-bit RGB; corrupt files raise :class:`DataError` naming the file.

    16-bit and 32-bit grayscale (PNG/TIFF modes ``I;16``, ``I``, ``F``) are scaled to 8 bits
    first: Pillow's own ``convert("RGB")`` clips them, so a 16-bit photo became pure white."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode.startswith("I") or image.mode == "F":
                image = _to_8_bits(image)
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def _to_8_bits(image):
    """A high-bit-depth grayscale image as mode ``L``: 16-bit values / 257 (65535 -> 255);
    a 32-bit integer image holding 8-bit values is kept as is; floats in [0, 1] x 255."""
    import numpy as np
    from PIL import Image

    values = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and values.max(initial=0) > 255):
        values = values / 257.0
    elif image.mode == "F" and values.max(initial=0) <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


@dataclass(frozen=True)
class Preprocessing:
    """One way of turning image files into a model's input: the normalisation the
    weights were trained with, and the augmentation that suits the images."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train_crop: str  # "pad": resize, random crop with 4/32 padding; "random-resized": Inception-style crop
    eval_resize: float  # evaluation resizes the shorter side to resolution x this, then center-crops


# A run's data info records one of these names (checkpoints, ONNX metadata).
STYLES = {
    # CIFAR-style training (pytorch-cifar): pad + crop + flip, CIFAR statistics
    "cifar": Preprocessing(CIFAR_MEAN, CIFAR_STD, "pad", 1.0),
    # the ImageNet papers: Inception crop for training, resize to R/0.875 + center crop for evaluation
    "imagenet": Preprocessing(IMAGENET_MEAN, IMAGENET_STD, "random-resized", 1 / 0.875),
    # ImageNet-pretrained weights fine-tuned on small images (CIFAR upscaled): the statistics the
    # weights expect, the gentle pad + crop augmentation small images need
    "imagenet-small": Preprocessing(IMAGENET_MEAN, IMAGENET_STD, "pad", 1.0),
}


def transforms_for(style: str, resolution: int, *, train: bool, channels: int = 3) -> T.Compose:
    """The preprocessing of ``style`` (see :data:`STYLES`), for images of any size.

    ``pad`` styles resize the shorter side to ``resolution`` (a no-op on CIFAR's own
    32x32 images), then RandomCrop(padding 4/32 of the side) + flip for training or
    a center crop for evaluation.  ``imagenet``: RandomResizedCrop + flip for
    training; resize to ``resolution / 0.875`` and center-crop for evaluation.
    ``channels=1`` converts to grayscale, normalised by the mean of the channels' statistics.
    """
    if style not in STYLES:
        raise DataError(f"unknown transform style {style!r}; use one of {', '.join(STYLES)}")
    if channels not in (1, 3):
        raise DataError(f"images can be preprocessed for 1 or 3 input channels, not {channels}")
    pre = STYLES[style]
    steps = [T.ToImage(), T.ToDtype(torch.float32, scale=True)]
    if channels == 1:
        steps.append(T.Grayscale(1))
    if train and pre.train_crop == "random-resized":
        steps += [T.RandomResizedCrop(resolution, antialias=True), T.RandomHorizontalFlip()]
    elif train:
        steps += [
            T.Resize(resolution, antialias=True),
            T.RandomCrop(resolution, padding=4 * resolution // 32),
            T.RandomHorizontalFlip(),
        ]
    else:
        steps += [T.Resize(int(round(resolution * pre.eval_resize)), antialias=True), T.CenterCrop(resolution)]
    mean, std = pre.mean, pre.std
    if channels == 1:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return T.Compose([*steps, T.Normalize(mean, std)])


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


def require_folder(folder: str | Path) -> Path:
    """``folder`` as a Path; one line naming it when it is not a folder (whichever option gave it:
    --data-dir, export's --eval-data, an API argument)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data directory not found: {folder}")
    return folder


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
    if not download:
        require_folder(data_dir)
    layout = detect_layout(data_dir, dataset) if data_dir.is_dir() else (dataset or "cifar10")
    train_tf = transforms_for(style, resolution, train=True)
    eval_tf = transforms_for(style, resolution, train=False)
    if layout == "imagefolder":
        val_dir = data_dir / "val" if (data_dir / "val").is_dir() else data_dir / "test"
        train, val = _image_folder(data_dir / "train", train_tf), _image_folder(val_dir, eval_tf)
        if train.classes != val.classes:
            only_train = sorted(set(train.classes) - set(val.classes))
            only_val = sorted(set(val.classes) - set(train.classes))
            shown = (
                "; ".join(
                    f"only in {where}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                    for where, names in (("train/", only_train), (f"{val_dir.name}/", only_val))
                    if names
                )
                or "the same folders, in another order"
            )
            raise DataError(f"{data_dir}: train/ and {val_dir.name}/ have different class folders ({shown})")
        classes, train_targets, val_targets = train.classes, train.targets, val.targets
    else:
        cls = datasets.CIFAR10 if layout == "cifar10" else datasets.CIFAR100
        try:
            train = cls(str(data_dir), train=True, transform=train_tf, download=download)
            val = cls(str(data_dir), train=False, transform=eval_tf, download=download)
        except RuntimeError as exc:
            raise DataError(f"{exc} (in {data_dir}; pass --download to fetch it)") from exc
        except OSError as exc:  # urllib's URLError included: no network, a proxy, a full disk
            reason = getattr(exc, "reason", None) or exc
            raise DataError(
                f"could not download {layout.upper()} into {data_dir} ({reason}); without a network, put "
                "torchvision's CIFAR files (or an ImageFolder tree) there and drop --download"
            ) from exc
        classes, train_targets, val_targets = train.classes, list(train.targets), list(val.targets)
    return (
        balanced_subset(train, train_subset, train_targets, seed),
        balanced_subset(val, val_subset, val_targets, seed + 1),
        list(classes),
    )


def eval_dataset(
    folder: str | Path, *, style: str, resolution: int, subset: int | None = None
) -> tuple[Dataset, list[str]]:
    """An evaluation set: the val/ (or test/) split of a train/val tree, or, for a
    folder of class folders (e.g. ``../shared/data/imagenet-sample``), the folder itself."""
    folder = require_folder(folder)
    split = next((folder / s for s in ("val", "test") if (folder / s).is_dir()), None)
    if split is None and (folder / "cifar-10-batches-py").is_dir():
        _, val, classes = build_datasets(folder, style=style, resolution=resolution, val_subset=subset)
        return val, classes
    dataset = _image_folder(split or folder, transforms_for(style, resolution, train=False))
    return balanced_subset(dataset, subset, dataset.targets, 1), list(dataset.classes)


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (seed, epoch, step, rank, ...)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2))) & (2**63 - 1)
    return value


class SeededDataset(Dataset):
    """Makes each sample's random augmentation a function of (seed, epoch, index).

    Random transforms draw from torch's global generator, whose state would
    otherwise depend on which worker loaded what and how far a run got.  Seeding
    per sample makes a run reproducible with any number of workers and lets a
    run resumed in the middle of an epoch see exactly the images it would have.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.seed, self.epoch, index))
            return self.dataset[index]


class ResumableSampler(DistributedSampler):
    """torch's DistributedSampler (seeded by seed + epoch, one shard per rank)
    that can start part-way into an epoch, for resuming mid-epoch."""

    def __init__(self, dataset: Dataset, *, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0):
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    workers: int,
    sampler=None,
    shuffle: bool = False,
    collate_fn=None,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader with the settings that keep a model busy (pinned memory on GPU)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        collate_fn=collate_fn,
    )


def _raw_images(dataset: Dataset, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a (Subset of a) CIFAR or ImageFolder dataset as uint8 N x 3 x R x R."""
    indices = list(range(len(dataset)))
    while isinstance(dataset, Subset):
        indices = [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    if isinstance(dataset, datasets.CIFAR10):  # CIFAR-100 subclasses it
        images = torch.from_numpy(dataset.data[indices]).permute(0, 3, 1, 2).contiguous()
        labels = torch.tensor([dataset.targets[i] for i in indices])
    elif isinstance(dataset, datasets.ImageFolder):
        to_tensor = T.Compose([T.ToImage(), T.Resize((resolution, resolution), antialias=True)])
        images = torch.stack(
            [
                to_tensor(load_rgb(dataset.samples[i][0]))
                for i in tqdm(indices, desc="loading images", leave=False, disable=None)
            ]
        )
        labels = torch.tensor([dataset.targets[i] for i in indices])
    else:
        raise DataError(f"cannot keep a {type(dataset).__name__} on the device; use a CIFAR or ImageFolder dataset")
    if images.shape[-1] != resolution:
        images = T.functional.resize(images, [resolution, resolution], antialias=True)
    return images, labels


class DeviceResidentLoader:
    """A small dataset (CIFAR-sized) kept on the device as uint8, augmented there.

    Random crop with zero padding, horizontal flip and normalisation are done on
    whole batches on the device, so a GPU never waits for CPU image decoding.
    Batches follow the same :class:`ResumableSampler` order as the CPU loader,
    and each batch's augmentation is seeded by (seed, epoch, position).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        sampler: ResumableSampler | None,
        *,
        device: str | torch.device,
        resolution: int,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        augment: bool,
        seed: int = 0,
    ):
        images, labels = _raw_images(dataset, resolution)
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.sampler, self.augment, self.seed = batch_size, sampler, augment, seed
        self.padding = 4 * resolution // 32
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.labels)
        return -(-n // self.batch_size)

    def _augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        p = self.padding
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n, 1), device=x.device, generator=generator)
        dx = torch.randint(0, 2 * p + 1, (n, 1), device=x.device, generator=generator)
        rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        channel = torch.arange(3, device=x.device)[None, :, None, None]
        x = padded[batch, channel, rows, cols]
        flip = torch.rand(n, device=x.device, generator=generator) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(3), x)

    def __iter__(self):
        if self.sampler is not None:
            order = torch.tensor(list(self.sampler), dtype=torch.long, device=self.labels.device)
            first_batch = self.sampler.start // self.batch_size
            epoch = self.sampler.epoch
        else:
            order, first_batch, epoch = torch.arange(len(self.labels), device=self.labels.device), 0, 0
        generator = torch.Generator(device=self.labels.device)
        for b, start in enumerate(range(0, len(order), self.batch_size)):
            index = order[start : start + self.batch_size]
            x = self.images[index].float().div_(255)
            if self.augment:
                generator.manual_seed(mix_seed(self.seed, epoch, first_batch + b))
                x = self._augment(x, generator)
            yield (x - self.mean) / self.std, self.labels[index]


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


def image_files(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (recursively), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def image_paths(paths: list[str]) -> list[str]:
    """``paths`` with each folder replaced by the images under it (sorted, recursively): what
    ``predict`` takes.  A folder without images is a :class:`DataError` naming it."""
    expanded = []
    for path in paths:
        if Path(path).is_dir():
            found = image_files(path)
            if not found:
                raise DataError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            expanded += [str(p) for p in found]
        else:
            expanded.append(path)
    return expanded


def calibration_images(folder: str | Path, *, style: str, resolution: int, count: int = 256) -> torch.Tensor:
    """``count`` unlabelled images from ``folder`` (any layout), evenly spread over its
    sorted files and preprocessed for evaluation: calibration for decoupling
    refinement and int8 quantization."""
    files = image_files(folder)
    if not files:
        raise DataError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) to calibrate with")
    if count < len(files):
        step = len(files) / count
        files = [files[int(i * step)] for i in range(count)]
    transform = transforms_for(style, resolution, train=False)
    return torch.stack(
        [transform(load_rgb(str(p))) for p in tqdm(files, desc="calibration images", leave=False, disable=None)]
    )


def read_yaml_config(config: Path) -> dict[str, Any]:
    """A dataset's YAML config as a dict; bad YAML raises :class:`DataError` naming the file."""
    yaml = require("yaml", f"{config}: reading dataset configs", "detection", error=DataError)

    try:
        spec = yaml.safe_load(config.read_text())
    except yaml.YAMLError as exc:
        raise DataError(f"{config}: not valid YAML ({exc})".replace("\n", " ")) from exc
    if not isinstance(spec, dict):
        raise DataError(f"{config}: expected a mapping of keys (train, val, names or classes)")
    return spec


def follow_path(base: Path, relative: str) -> Path:
    """``base / relative``, following symbolic links that were copied as small text files
    holding their target (as git checks them out where links are not kept)."""
    path = base
    for part in Path(relative).parts:
        path = path / part
        if path.is_file() and path.stat().st_size < 1024 and not path.suffix:
            path = (path.parent / path.read_text().strip()).resolve()
    return path


def select_classes(wanted: str | list[str], known: list[tuple[int, str]], where: str) -> list[int]:
    """The ids of the classes ``wanted`` names (``"person,car"``, or ids as the dataset numbers
    them), in the order given, from a dataset's ``known`` (id, name) pairs; a name or id it does
    not have is a :class:`DataError` listing the ones it has."""
    tokens = [t.strip() for t in (wanted.split(",") if isinstance(wanted, str) else wanted) if str(t).strip()]
    if not tokens:
        raise DataError(f"--classes names no class; {where} has: {_listing(known)}")
    by_name = {name.lower(): number for number, name in known}
    ids = {number for number, _ in known}
    chosen = []
    for token in tokens:
        token = str(token)
        number = int(token) if token.lstrip("-").isdigit() else by_name.get(token.lower())
        if number is None or number not in ids:
            raise DataError(f"--classes: {where} has no class {token!r}; it has: {_listing(known)}")
        if number in chosen:
            raise DataError(f"--classes names {token!r} twice")
        chosen.append(number)
    return chosen


def _listing(known: list[tuple[int, str]], most: int = 30) -> str:
    shown = ", ".join(f"{number} {name}" for number, name in known[:most])
    return shown + (f" and {len(known) - most} more" if len(known) > most else "")
