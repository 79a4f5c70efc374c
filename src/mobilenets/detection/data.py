"""Detection datasets: the YOLO text layout and COCO JSON, read into torchvision's
transforms-v2 targets so that every augmentation moves the boxes with the image.

Each sample is ``(image, target)``: a ``tv_tensors.Image`` (uint8, C x H x W) and a dict
with ``boxes`` (``tv_tensors.BoundingBoxes``, x1 y1 x2 y2 in pixels), ``labels``
(int64; 0 is the background, so a dataset's first class is 1) and ``image_id``.

* **YOLO** - ``images/<split>/*.jpg`` beside ``labels/<split>/*.txt``, one
  ``class cx cy w h`` line per box, normalised to the image; the class names in the
  dataset's YAML (``names:``), as ``../shared/data/coco128/object_detection`` holds.
  An image without a label file is a background image (no boxes) - valid, and counted
  in a warning; a label file without its image is skipped with a warning naming it
  (coco128 itself has two); a line that does not parse, a class outside the list, a
  box of no area or outside the image is an error naming the file and line.
* **COCO** - ``annotations/instances_<split>.json`` with the images in ``<split>/``
  or ``images/<split>/``, read by torchvision's ``CocoDetection``; labels are COCO's
  category ids (1..90, so 91 outputs with the background).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

from ..data import IMAGE_SUFFIXES, follow_path, load_rgb, read_yaml_config
from ..errors import DataError

__all__ = ["DetectionData", "YoloDetection", "collate", "detection_transforms", "find_detection_data"]

BACKGROUND = "__background__"
# How far a normalised coordinate may stray past the image edge (rounding in exported labels).
EDGE_TOLERANCE = 1e-3


def collate(batch: list[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
    """Images of different sizes stay a list (the detector resizes each)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def detection_transforms(style: str, resolution: int, *, train: bool, fill: tuple[float, ...]) -> T.Compose:
    """Training augmentation as in torchvision's SSD / SSDLite references, or none.

    ``ssd``: photometric distortion, zoom-out (the canvas filled with the mean colour),
    a random crop keeping boxes at some minimum IoU, flip.  ``ssdlite``: the crop and
    the flip only (small models under-fit rather than over-fit).  Training images are
    resized to the detector's square input here, so batches are small; evaluation
    images keep their size and the detector maps its boxes back to them.
    """
    if style not in ("ssd", "ssdlite"):
        raise DataError(f"unknown detection augmentation {style!r}; use ssd or ssdlite")
    steps: list[Any] = [T.ToImage()]
    if train:
        if style == "ssd":
            mean = [round(255 * f) for f in fill]
            steps += [T.RandomPhotometricDistort(p=0.5), T.RandomZoomOut(fill={tv_tensors.Image: mean, "others": 0})]
        steps += [
            T.RandomIoUCrop(),
            T.RandomHorizontalFlip(),
            T.Resize((resolution, resolution), antialias=True),
            T.SanitizeBoundingBoxes(),
        ]
    # images to [0, 1]; boxes to float (COCO files may hold integer boxes)
    dtypes = {tv_tensors.Image: torch.float32, tv_tensors.BoundingBoxes: torch.float32, "others": None}
    steps.append(T.ToDtype(dtypes, scale=True))
    return T.Compose(steps)


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except OSError as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc


def read_yolo_labels(path: Path, num_classes: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (x1 y1 x2 y2 pixels) and 1-based labels from a YOLO label file; a line that
    does not parse, a class outside the list, a box of no area or outside the image
    raises :class:`DataError` naming the file and line."""
    boxes, labels = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}, line {number}"
        if len(fields) != 5:
            raise DataError(f"{where}: expected 'class cx cy w h', got {line.strip()!r}")
        try:
            cls = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise DataError(f"{where}: expected an integer class and four numbers, got {line.strip()!r}") from None
        if not 0 <= cls < num_classes:
            raise DataError(f"{where}: class {cls} is outside the {num_classes} classes 0-{num_classes - 1}")
        if not (w > 0 and h > 0):
            raise DataError(f"{where}: the box has no area (w {w}, h {h})")
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        if min(x1, y1) < -EDGE_TOLERANCE or max(x2, y2) > 1 + EDGE_TOLERANCE:
            raise DataError(f"{where}: the box ({x1:.3f}, {y1:.3f}) - ({x2:.3f}, {y2:.3f}) leaves the image [0, 1]")
        boxes.append([max(x1, 0) * width, max(y1, 0) * height, min(x2, 1) * width, min(y2, 1) * height])
        labels.append(cls + 1)
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels, dtype=torch.int64)


class YoloDetection(Dataset):
    """One split of a YOLO-layout dataset (see the module docstring); every label file is
    checked when the dataset is made, so a bad line stops a run before it starts."""

    def __init__(self, images: Path, labels: Path, class_names: list[str], transforms: Any = None) -> None:
        if not images.is_dir():
            raise DataError(f"{images}: no such image folder")
        self.files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise DataError(f"{images}: the split holds no images")
        stems = {p.stem for p in self.files}
        orphans = sorted(p for p in labels.glob("*.txt") if p.stem not in stems) if labels.is_dir() else []
        if orphans:
            # Not an error: real sets ship them (coco128's train2017 has two), and nothing is lost
            # by skipping boxes that have no picture; but the user is told which.
            shown = ", ".join(p.name for p in orphans[:3]) + (
                f" and {len(orphans) - 3} more" if len(orphans) > 3 else ""
            )
            warnings.warn(f"{labels}: {len(orphans)} label files have no image in {images} and are skipped: {shown}",
                          stacklevel=2)  # fmt: skip
        self.classes = [BACKGROUND, *class_names]
        self.transforms = transforms
        self.targets: list[tuple[torch.Tensor, torch.Tensor, tuple[int, int]]] = []
        background = 0
        for path in self.files:
            height, width = _image_size(path)
            label_file = labels / f"{path.stem}.txt"
            if label_file.exists():
                boxes, ids = read_yolo_labels(label_file, len(class_names), height, width)
            else:
                boxes, ids = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
                background += 1
            self.targets.append((boxes, ids, (height, width)))
        if background:
            warnings.warn(
                f"{images}: {background} of {len(self.files)} images have no label file in {labels} "
                "and are used as background (no objects)",
                stacklevel=2,
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        boxes, labels, size = self.targets[index]
        image = tv_tensors.Image(T.functional.pil_to_tensor(load_rgb(self.files[index])))
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes.clone(), format="XYXY", canvas_size=size),
            "labels": labels.clone(),
            "image_id": index,
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def _coco_split(root: Path, annotations: Path, transforms: Any) -> tuple[Dataset, list[str]]:
    from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2

    split = annotations.stem.removeprefix("instances_")
    folder = next((f for f in (root / split, root / "images" / split) if f.is_dir()), None)
    if folder is None:
        raise DataError(f"{annotations}: no image folder {root / split} or {root / 'images' / split}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            dataset = CocoDetection(str(folder), str(annotations), transforms=transforms)
    except (ValueError, KeyError) as exc:
        raise DataError(f"{annotations}: not a COCO instances file ({exc})") from exc
    if not len(dataset):
        raise DataError(f"{annotations}: the split holds no images")
    categories = dataset.coco.loadCats(dataset.coco.getCatIds())
    classes = ["N/A"] * (max(c["id"] for c in categories) + 1)
    classes[0] = BACKGROUND
    for c in categories:
        classes[c["id"]] = c["name"]
    wrapped = wrap_dataset_for_transforms_v2(dataset, target_keys=("boxes", "labels", "image_id"))
    return wrapped, classes


def _yolo_config(data_dir: Path) -> Path | None:
    for folder in (data_dir, data_dir / "object_detection"):
        for name in ("data.yaml", "config.yaml", "dataset.yaml"):
            if (folder / name).is_file():
                return folder / name
    return None


def _yolo_names(config: Path, spec: dict[str, Any]) -> list[str]:
    names = spec.get("names")
    if isinstance(names, dict):
        ids = sorted(names)
        if ids != list(range(len(ids))):
            raise DataError(f"{config}: names must number the classes 0..N-1, got ids {ids[:5]}...")
        return [str(names[i]) for i in ids]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    raise DataError(f"{config}: no class list under 'names:'")


@dataclass
class DetectionData:
    train: Dataset
    val: Dataset
    classes: list[str]  # index = label; 0 is the background
    layout: str  # "yolo" or "coco"


def find_detection_data(
    data_dir: str | Path, *, train_transforms: Any = None, val_transforms: Any = None
) -> DetectionData:
    """The train and validation splits of ``data_dir``: a YOLO dataset (its YAML in the folder
    or in ``object_detection/``, as coco128 has it) or COCO JSON (``annotations/instances_*.json``)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir}: no such folder")
    config = _yolo_config(data_dir)
    if config is not None:
        spec = read_yaml_config(config)
        base = config.parent / str(spec.get("path") or ".")
        names = _yolo_names(config, spec)
        splits = {}
        for split, transforms in (("train", train_transforms), ("val", val_transforms)):
            relative = str(spec.get(split) or f"images/{split}")
            images = follow_path(base, relative)
            if not images.is_dir():
                raise DataError(f"{config}: the {split} images {relative} are not a folder ({images})")
            # YOLO's convention: the labels sit where the images do, under labels/ for images/
            labels = follow_path(base, relative.replace("images", "labels", 1))
            splits[split] = YoloDetection(images, labels, names, transforms)
        return DetectionData(splits["train"], splits["val"], [BACKGROUND, *names], "yolo")
    annotations = sorted((data_dir / "annotations").glob("instances_*.json"))
    if annotations:
        train = [a for a in annotations if "train" in a.stem]
        val = [a for a in annotations if "val" in a.stem]
        if not train or not val:
            raise DataError(f"{data_dir / 'annotations'}: need instances_train*.json and instances_val*.json")
        train_set, classes = _coco_split(data_dir, train[0], train_transforms)
        val_set, _ = _coco_split(data_dir, val[0], val_transforms)
        return DetectionData(train_set, val_set, classes, "coco")
    raise DataError(
        f"{data_dir} holds no detection dataset: expected a YOLO data.yaml/config.yaml (with images/ and labels/) "
        "or COCO annotations/instances_*.json"
    )
