"""Segmentation datasets: image/mask folder pairs and Pascal VOC, read into torchvision's
transforms-v2 types so that every augmentation moves the mask with the image.

Each sample is ``(image, mask)``: a ``tv_tensors.Image`` and a ``tv_tensors.Mask``
(int64, H x W) of training indices ``0..classes-1``, with :data:`IGNORE` (255) where a
pixel is not scored (VOC's object borders, padding added by a crop, ignored classes).

* **Folder pairs** - a YAML config (``config.yaml``/``data.yaml``/``dataset.yaml``, in
  ``--data-dir`` or its ``semantic_segmentation/``, as ``../shared/data/coco128`` has
  it) naming ``train: {images, masks}`` and ``val: {images, masks}``, the ``classes``
  (``id: name``; the ids a mask's pixels hold, any integers below 255, need not be
  contiguous: coco128's run 0..200 over 130 classes) and optionally
  ``ignore_classes`` (ids scored as ignore).  A mask is a single-channel PNG with its
  image's stem.  The ids are renumbered ``0..N-1`` in the order listed, and a trained
  model records them, so predicted masks are written in the dataset's own ids.
* **Pascal VOC** - ``VOCdevkit/VOC2012`` (or ``VOC2007``), or that folder itself, read by
  torchvision's ``VOCSegmentation`` (``ImageSets/Segmentation/{train,val}.txt``,
  ``JPEGImages``, palette PNGs in ``SegmentationClass``): 21 classes, 255 on borders.

Every mask is read and checked when the dataset is made, so a bad file stops a run
before it starts: a mask whose size differs from its image's, a pixel value outside the
class list (other than 255), a mask without its image, a VOC list naming a missing file
are errors naming the file.  Images without a mask are left out with a warning naming
them: a labelled subset of a folder of images is normal (coco128 labels 100 of its 128).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2 as T
from tqdm.auto import tqdm

from ..data import (
    IMAGE_SUFFIXES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    follow_path,
    load_rgb,
    read_yaml_config,
    require_folder,
    select_classes,
)
from ..errors import DataError

__all__ = [
    "IGNORE",
    "VOC_CLASSES",
    "MaskPairs",
    "SegmentationData",
    "collate",
    "find_segmentation_data",
    "segmentation_transforms",
]

IGNORE = 255  # a mask value never scored (VOC's convention, and torchvision's references')
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")


def voc_classes(num_classes: int) -> tuple[list[str], str] | None:
    """Pascal VOC's 21 class names for a 21-way segmenter (torchvision's segmentation weights' classes)."""
    return (list(VOC_CLASSES), "voc") if num_classes == 21 else None


VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def segmentation_transforms(resolution: int, *, train: bool) -> T.Compose:
    """Joint image/mask transforms (torchvision's segmentation references, at ``resolution``).

    Training: a random rescale (shorter side 0.5x-2x ``resolution``), a random
    ``resolution`` x ``resolution`` crop (padded where the image is smaller: the mean
    colour in the image, :data:`IGNORE` in the mask, so padding is never scored), a
    horizontal flip.  Evaluation: no resizing here - the evaluator runs the network on
    the image resized to ``resolution`` x ``resolution`` and scores its output, resized
    back, at the mask's own size.
    Images end normalised with ImageNet statistics (the backbones' pretraining).
    """
    steps: list[Any] = [T.ToImage()]
    if train:
        mean = [round(255 * m) for m in IMAGENET_MEAN]
        steps += [
            T.RandomShortestSize(list(range(resolution // 2, 2 * resolution + 1, max(1, resolution // 16)))),
            T.RandomCrop(resolution, pad_if_needed=True, fill={tv_tensors.Image: mean, tv_tensors.Mask: IGNORE}),
            T.RandomHorizontalFlip(),
        ]
    steps += [
        T.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]
    return T.Compose(steps)


def collate(batch: list[tuple[Any, Any]]) -> tuple[Any, Any]:
    """Crops of one size stack into a batch; evaluation images keep their own sizes (lists)."""
    images, masks = zip(*batch)
    if len({tuple(i.shape) for i in images}) == 1 and len({tuple(m.shape) for m in masks}) == 1:
        return torch.stack(images), torch.stack(masks)
    return list(images), list(masks)


def _lookup(class_ids: Sequence[int], ignore_ids: Sequence[int]) -> np.ndarray:
    """A 256-entry table from a mask's pixel value to its training index (IGNORE for
    ignored ids and 255; -1 for values outside the class list)."""
    table = np.full(256, -1, dtype=np.int64)
    for index, class_id in enumerate(class_ids):
        table[class_id] = index
    table[list(ignore_ids)] = IGNORE
    table[IGNORE] = IGNORE
    return table


def read_mask(path: Path, table: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The training indices of mask ``path`` (H x W), checked against its image's
    ``size`` (width, height) and the class list; a mismatch raises naming the file."""
    try:
        with Image.open(path) as mask:
            if mask.mode not in ("L", "P", "I", "I;16"):
                raise DataError(
                    f"{path}: a mask must be a single-channel image of class ids (mode L or P), not mode {mask.mode}"
                )
            if mask.size != size:
                raise DataError(
                    f"{path}: the mask is {mask.size[0]}x{mask.size[1]} but its image is {size[0]}x{size[1]}"
                )
            values = np.asarray(mask, dtype=np.int64)
    except OSError as exc:
        raise DataError(f"{path}: not a readable mask ({exc})") from exc
    if values.min() < 0 or values.max() > 255:
        raise DataError(f"{path}: mask values run {values.min()}..{values.max()}; class ids must lie in 0..255")
    indices = table[values]
    if (indices < 0).any():
        unknown = sorted(set(np.unique(values[indices < 0]).tolist()))
        shown = ", ".join(map(str, unknown[:5])) + (" ..." if len(unknown) > 5 else "")
        raise DataError(f"{path}: mask values {shown} are not in the class list (nor {IGNORE}, the ignore value)")
    return indices


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except OSError as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc


class MaskPairs(Dataset):
    """(image, mask) file pairs with their class list; every mask is read and checked
    here (see the module docstring), and kept in memory as uint8 - a 640x480 mask is
    300 kB, so ten thousand of them fit in 3 GB; larger sets should use ``cache=False``."""

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        classes: Sequence[str],
        table: np.ndarray,
        transforms: Any = None,
        *,
        cache: bool = True,
        progress: bool | None = None,
    ) -> None:
        if not pairs:
            raise DataError("the split holds no image/mask pairs")
        self.pairs = [(Path(i), Path(m)) for i, m in pairs]
        self.classes = list(classes)
        self.table = table
        self.transforms = transforms
        self.masks: list[np.ndarray | None] = []
        for image, mask in tqdm(self.pairs, desc="checking masks", leave=False, disable=progress is False or None):
            indices = read_mask(mask, table, _image_size(image))
            self.masks.append(indices.astype(np.uint8) if cache else None)

    def __len__(self) -> int:
        return len(self.pairs)

    def mask(self, index: int) -> torch.Tensor:
        """Training indices of sample ``index`` (H x W, int64)."""
        cached = self.masks[index]
        if cached is None:
            image, mask = self.pairs[index]
            cached = read_mask(mask, self.table, _image_size(image))
        return torch.from_numpy(np.asarray(cached, dtype=np.int64))

    def __getitem__(self, index: int):
        image = tv_tensors.Image(T.functional.pil_to_tensor(load_rgb(self.pairs[index][0])))
        mask = tv_tensors.Mask(self.mask(index))
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask


@dataclass
class SegmentationData:
    train: MaskPairs | None  # None: a split find_segmentation_data was not asked to read
    val: MaskPairs | None
    classes: list[str]  # index = training index
    class_ids: list[int]  # the value each class has in the dataset's masks
    layout: str  # "folders" or "voc"
    selected: list[str] | None = None  # the classes --classes kept (by name), after the background


def _selection(
    class_ids: list[int], names: list[str], ignore: list[int], wanted: str | list[str] | None, where: str
) -> tuple[np.ndarray, list[int], list[str], list[str] | None]:
    """The mask lookup table, class ids and names for training, and the names --classes kept:
    with ``wanted``, the first class (the background: "unlabeled", VOC's "background") and the
    chosen ones renumbered 1..K, every other class background; without, every class as listed."""
    if wanted is None:
        return _lookup(class_ids, ignore), class_ids, names, None
    chosen = select_classes(wanted, list(zip(class_ids[1:], names[1:])), where)
    table = _lookup(class_ids, ignore)
    table[(table >= 0) & (table != IGNORE)] = 0  # every listed class is background...
    for index, class_id in enumerate(chosen, 1):  # ...but the chosen ones
        table[class_id] = index
    kept = [names[class_ids.index(i)] for i in chosen]
    return table, [class_ids[0], *chosen], [names[0], *kept], kept


def _find_config(data_dir: Path) -> Path | None:
    for folder in (data_dir, data_dir / "semantic_segmentation"):
        for name in ("config.yaml", "data.yaml", "dataset.yaml"):
            if (folder / name).is_file():
                return folder / name
    return None


def _config_classes(config: Path, spec: dict[str, Any]) -> tuple[list[int], list[str], list[int]]:
    classes = spec.get("classes", spec.get("names"))
    if isinstance(classes, list):
        classes = dict(enumerate(classes))
    if not isinstance(classes, dict) or not classes:
        raise DataError(f"{config}: no class list under 'classes:' (id: name)")
    if not all(isinstance(k, int) and 0 <= k < IGNORE for k in classes):
        bad = next(k for k in classes if not (isinstance(k, int) and 0 <= k < IGNORE))
        raise DataError(f"{config}: class id {bad!r} must be an integer 0..254 (255 is the ignore value)")
    ignore = spec.get("ignore_classes") or []
    if not isinstance(ignore, list) or not all(isinstance(k, int) and k in classes for k in ignore):
        raise DataError(f"{config}: ignore_classes must list ids from 'classes:', got {ignore!r}")
    kept = [k for k in classes if k not in ignore]  # in the order listed
    return kept, [str(classes[k]) for k in kept], list(ignore)


def _folder_pairs(images: Path, masks: Path) -> list[tuple[Path, Path]]:
    images, masks = Path(os.path.normpath(images)), Path(os.path.normpath(masks))  # "x/../images" read as "images"
    if not images.is_dir():
        raise DataError(f"{images}: no such image folder")
    if not masks.is_dir():
        raise DataError(f"{masks}: no such mask folder")
    by_stem = {p.stem: p for p in sorted(images.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    mask_files = sorted(p for p in masks.iterdir() if p.suffix.lower() in MASK_SUFFIXES)
    if not mask_files:
        raise DataError(f"{masks}: holds no masks ({', '.join(MASK_SUFFIXES)})")
    missing = next((m for m in mask_files if m.stem not in by_stem), None)
    if missing is not None:
        raise DataError(f"{missing}: the mask has no image {missing.stem}.* in {images}")
    unlabelled = sorted(set(by_stem) - {m.stem for m in mask_files})
    if unlabelled:
        shown = ", ".join(by_stem[s].name for s in unlabelled[:3]) + (
            f" and {len(unlabelled) - 3} more" if len(unlabelled) > 3 else ""
        )
        warnings.warn(f"{images}: {len(unlabelled)} of {len(by_stem)} images have no mask in {masks} and are "
                      f"left out: {shown}", stacklevel=3)  # fmt: skip
    return [(by_stem[m.stem], m) for m in mask_files]


def _voc_root(data_dir: Path) -> Path | None:
    """The VOC20xx folder under (or at) ``data_dir``."""
    candidates = [data_dir, *sorted((data_dir / "VOCdevkit").glob("VOC20*"))]
    return next((c for c in candidates if (c / "ImageSets" / "Segmentation").is_dir()), None)


def _voc_pairs(voc: Path, split: str) -> list[tuple[Path, Path]]:
    from torchvision.datasets import VOCSegmentation

    listing = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise DataError(f"{listing}: no such split list")
    if voc.parent.name != "VOCdevkit" or not voc.name[3:].isdigit():
        raise DataError(f"{voc}: a VOC folder must be VOCdevkit/VOC<year> (as torchvision's VOCSegmentation reads it)")
    dataset = VOCSegmentation(str(voc.parent.parent), year=voc.name[3:], image_set=split)
    pairs = [(Path(i), Path(m)) for i, m in zip(dataset.images, dataset.masks)]
    for number, (image, mask) in enumerate(pairs, 1):
        for path in (image, mask):
            if not path.is_file():
                raise DataError(f"{listing}, line {number}: names {image.stem}, but {path} does not exist")
    return pairs


def find_segmentation_data(
    data_dir: str | Path,
    *,
    train_transforms: Any = None,
    val_transforms: Any = None,
    progress: bool | None = None,
    classes: str | list[str] | None = None,
    splits: tuple[str, ...] = ("train", "val"),
) -> SegmentationData:
    """The train and validation splits of ``data_dir``: folder pairs named by a YAML config
    (in the folder or its ``semantic_segmentation/``) or a Pascal VOC tree.  ``classes`` keeps
    only those classes (``"person"``, names or the masks' ids), the rest become background.
    ``splits`` names the splits read (and their masks checked); the others are None (evaluation
    reads one, without the other's warnings or the time its masks take)."""
    data_dir = require_folder(data_dir)
    config = _find_config(data_dir)
    if config is not None:
        spec = read_yaml_config(config)
        class_ids, names, ignore = _config_classes(config, spec)
        table, class_ids, names, selected = _selection(class_ids, names, ignore, classes, str(config))
        base = config.parent / str(spec.get("path") or ".")
        read: dict[str, MaskPairs | None] = {}
        for split, transforms in (("train", train_transforms), ("val", val_transforms)):
            entry = spec.get(split)
            if not isinstance(entry, dict) or not {"images", "masks"} <= set(entry):
                raise DataError(f"{config}: '{split}:' must name its 'images:' and 'masks:' folders")
            read[split] = None
            if split in splits:
                images, masks = follow_path(base, str(entry["images"])), follow_path(base, str(entry["masks"]))
                read[split] = MaskPairs(_folder_pairs(images, masks), names, table, transforms, progress=progress)
        return SegmentationData(read["train"], read["val"], names, class_ids, "folders", selected)
    voc = _voc_root(data_dir)
    if voc is not None:
        table, class_ids, names, selected = _selection(
            list(range(len(VOC_CLASSES))), list(VOC_CLASSES), [], classes, str(voc)
        )
        train, val = (
            MaskPairs(_voc_pairs(voc, split), names, table, transforms, progress=progress) if split in splits else None
            for split, transforms in (("train", train_transforms), ("val", val_transforms))
        )
        return SegmentationData(train, val, names, class_ids, "voc", selected)
    raise DataError(
        f"{data_dir} holds no segmentation dataset: expected a config.yaml naming train/val images and masks "
        "(and classes), or Pascal VOC's VOCdevkit/VOC2012 with ImageSets/Segmentation"
    )
