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
  or ``images/<split>/``; labels are COCO's category ids (1..90, so 91 outputs with the
  background).  Checked as the YOLO files are: a missing image, an unknown image or
  category id, a box of no area or outside its image is an error naming the file and record;
  an image without annotations is a background image.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

from ..data import IMAGE_SUFFIXES, follow_path, load_rgb, read_yaml_config, require_folder, select_classes
from ..errors import DataError

__all__ = [
    "BoxDataset",
    "CocoDetection",
    "DetectionData",
    "YoloDetection",
    "collate",
    "detection_transforms",
    "find_detection_data",
]

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


class BoxDataset(Dataset):
    """Images with their boxes, read and checked up front: ``files``, ``targets`` (boxes,
    labels, (height, width)) and the ``transforms`` applied to each sample."""

    files: list[Path]
    targets: list[tuple[torch.Tensor, torch.Tensor, tuple[int, int]]]
    transforms: Any

    def __len__(self) -> int:
        return len(self.files)

    def keep_classes(self, labels: list[int]) -> None:
        """Keep only the boxes of ``labels`` (in place), renumbered 1, 2, ... in that order: the
        other objects become background."""
        renumber = torch.zeros(max([*labels, *(int(t[1].max()) for t in self.targets if len(t[1]))]) + 1,
                               dtype=torch.int64)  # fmt: skip
        renumber[torch.tensor(labels)] = torch.arange(1, len(labels) + 1)
        kept = []
        for boxes, ids, size in self.targets:
            new = renumber[ids]
            kept.append((boxes[new > 0], new[new > 0], size))
        self.targets = kept

    def drop_empty(self, keep_every: int = 0) -> int:
        """Keep only the images that hold an object (in place) and, with ``keep_every`` K, every Kth
        of the others after them; returns how many were dropped."""
        kept = [i for i, (_, labels, _) in enumerate(self.targets) if len(labels)]
        if keep_every:
            kept += [i for i, (_, labels, _) in enumerate(self.targets) if not len(labels)][::keep_every]
        dropped = len(self.files) - len(kept)
        self.files = [self.files[i] for i in kept]
        self.targets = [self.targets[i] for i in kept]
        return dropped

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


class YoloDetection(BoxDataset):
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


def coco_classes(num_classes: int) -> tuple[list[str], str] | None:
    """COCO's 91 category names (ids 0-90, gaps "N/A") for a detector with 91 outputs, as
    torchvision's COCO weights name them (no download)."""
    if num_classes != 91:
        return None
    from torchvision.models.detection import SSDLite320_MobileNet_V3_Large_Weights

    return list(SSDLite320_MobileNet_V3_Large_Weights.COCO_V1.meta["categories"]), "coco"


def _coco_records(annotations: Path) -> dict[str, list[dict[str, Any]]]:
    """The ``images``, ``annotations`` and ``categories`` lists of a COCO instances file."""
    try:
        spec = json.loads(annotations.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{annotations}: not a COCO instances file ({exc})") from exc
    if not isinstance(spec, dict):
        raise DataError(f"{annotations}: not a COCO instances file (expected a JSON object)")
    records = {}
    for key in ("images", "annotations", "categories"):
        value = spec.get(key, [] if key == "annotations" else None)
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise DataError(f"{annotations}: not a COCO instances file (no list of objects under {key!r})")
        records[key] = value
    if not records["categories"]:
        raise DataError(f"{annotations}: the category list is empty")
    return records


def _coco_box(where: str, bbox: Any, size: tuple[int, int]) -> list[float]:
    """One annotation's ``[x, y, w, h]`` as x1 y1 x2 y2, checked as the YOLO reader checks its lines."""
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        raise DataError(f"{where}: bbox must be [x, y, width, height], got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if not (w > 0 and h > 0):
        raise DataError(f"{where}: the box has no area (width {w}, height {h})")
    height, width = size
    slack = EDGE_TOLERANCE * max(height, width) + 1  # COCO's own files round boxes to the pixel
    if x < -slack or y < -slack or x + w > width + slack or y + h > height + slack:
        raise DataError(f"{where}: the box ({x:.1f}, {y:.1f}) - ({x + w:.1f}, {y + h:.1f}) leaves the "
                        f"{width}x{height} image")  # fmt: skip
    return [max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))]


class CocoDetection(BoxDataset):
    """One split of a COCO instances file, checked when the dataset is made as the YOLO reader is:
    every image file present, every annotation's image and category known, every box inside its
    image with an area - each mistake a :class:`DataError` naming the file and the record.  Images
    without annotations are background images (no boxes).  Labels are COCO's category ids, so
    ``classes[id]`` names them (ids the file does not use are ``"N/A"``, 91 outputs for COCO's 80)."""

    def __init__(self, folder: Path, annotations: Path, transforms: Any = None) -> None:
        records = _coco_records(annotations)
        names: dict[int, str] = {}
        for number, category in enumerate(records["categories"]):
            if not isinstance(category.get("id"), int) or category["id"] < 1:
                raise DataError(f"{annotations}: categories[{number}] needs an integer id of at least 1 "
                                f"(0 is the background), got {category.get('id')!r}")  # fmt: skip
            names[category["id"]] = str(category.get("name", category["id"]))
        self.classes = ["N/A"] * (max(names) + 1)
        self.classes[0] = BACKGROUND
        for number, name in names.items():
            self.classes[number] = name
        self.files: list[Path] = []
        sizes: list[tuple[int, int]] = []
        index_of: dict[Any, int] = {}
        for number, record in enumerate(records["images"]):
            if "id" not in record or not isinstance(record.get("file_name"), str):
                raise DataError(f"{annotations}: images[{number}] needs an id and a file_name")
            path = folder / record["file_name"]
            if not path.is_file():
                raise DataError(f"{annotations}: images[{number}] (id {record['id']}): no image file {path}")
            given = (record.get("height"), record.get("width"))
            sizes.append(given if all(isinstance(v, int) and v > 0 for v in given) else _image_size(path))
            index_of[record["id"]] = len(self.files)
            self.files.append(path)
        if not self.files:
            raise DataError(f"{annotations}: the split holds no images")
        boxes: list[list[list[float]]] = [[] for _ in self.files]
        labels: list[list[int]] = [[] for _ in self.files]
        for number, record in enumerate(records["annotations"]):
            where = f"{annotations}: annotations[{number}] (id {record.get('id')})"
            image = index_of.get(record.get("image_id"))
            if image is None:
                raise DataError(f"{where}: image_id {record.get('image_id')!r} is not in the images list")
            if record.get("category_id") not in names:
                raise DataError(f"{where}: category_id {record.get('category_id')!r} is not in the categories "
                                f"({', '.join(str(i) for i in sorted(names))})")  # fmt: skip
            boxes[image].append(_coco_box(where, record.get("bbox"), sizes[image]))
            labels[image].append(record["category_id"])
        self.targets = [
            (torch.tensor(b, dtype=torch.float32).reshape(-1, 4), torch.tensor(l, dtype=torch.int64), size)
            for b, l, size in zip(boxes, labels, sizes)
        ]
        self.transforms = transforms
        background = sum(1 for b in boxes if not b)
        if background:
            warnings.warn(f"{annotations}: {background} of {len(self.files)} images have no annotations "
                          "and are used as background (no objects)", stacklevel=2)  # fmt: skip


def _coco_split(root: Path, annotations: Path, transforms: Any) -> tuple[CocoDetection, list[str]]:
    split = annotations.stem.removeprefix("instances_")
    folder = next((f for f in (root / split, root / "images" / split) if f.is_dir()), None)
    if folder is None:
        raise DataError(f"{annotations}: no image folder {root / split} or {root / 'images' / split}")
    dataset = CocoDetection(folder, annotations, transforms)
    return dataset, dataset.classes


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
    train: Dataset | None  # None where find_detection_data was asked for the other split only
    val: Dataset | None
    classes: list[str]  # index = label; 0 is the background
    layout: str  # "yolo" or "coco"
    selected: list[str] | None = None  # the classes --classes kept (by name), renumbered 1..K


def _keep_classes(data: DetectionData, wanted: str | list[str], data_dir: Path) -> DetectionData:
    """``data`` with only the ``wanted`` classes (names, or the dataset's own ids: YOLO's 0-based
    class ids, COCO's category ids), renumbered 1..K; every other object becomes background."""
    offset = 1 if data.layout == "yolo" else 0  # a YOLO class id is its label - 1, a COCO id its label
    known = [(label - offset, name) for label, name in enumerate(data.classes) if label and name != "N/A"]
    labels = [number + offset for number in select_classes(wanted, known, str(data_dir))]
    for split in (data.train, data.val):
        if split is not None:
            split.keep_classes(labels)
    names = [data.classes[label] for label in labels]
    return DetectionData(data.train, data.val, [BACKGROUND, *names], data.layout, selected=names)


def find_detection_data(
    data_dir: str | Path,
    *,
    train_transforms: Any = None,
    val_transforms: Any = None,
    splits: tuple[str, ...] = ("train", "val"),
    classes: str | list[str] | None = None,
) -> DetectionData:
    """The train and validation splits of ``data_dir``: a YOLO dataset (its YAML in the folder
    or in ``object_detection/``, as coco128 has it) or COCO JSON (``annotations/instances_*.json``).
    ``splits`` names the splits read (and checked); the others are None (evaluation reads one).
    ``classes`` keeps only those classes (``"person,car"``), renumbered, the rest background."""
    if classes is None:
        return _find_detection_data(Path(data_dir), train_transforms, val_transforms, splits)
    # the readers' warnings (unlabelled images...) only once the classes are known to exist:
    # a mistyped name is then one line, not two warnings and the error
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = _keep_classes(_find_detection_data(Path(data_dir), train_transforms, val_transforms, splits),
                             classes, Path(data_dir))  # fmt: skip
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return data


def _find_detection_data(data_dir: Path, train_transforms: Any, val_transforms: Any, splits: tuple[str, ...]):
    require_folder(data_dir)
    config = _yolo_config(data_dir)
    if config is not None:
        spec = read_yaml_config(config)
        base = config.parent / str(spec.get("path") or ".")
        names = _yolo_names(config, spec)
        found: dict[str, Dataset | None] = {"train": None, "val": None}
        for split, transforms in (("train", train_transforms), ("val", val_transforms)):
            if split not in splits:
                continue
            relative = str(spec.get(split) or f"images/{split}")
            images = follow_path(base, relative)
            if not images.is_dir():
                raise DataError(f"{config}: the {split} images {relative} are not a folder ({images})")
            # YOLO's convention: the labels sit where the images do, under labels/ for images/
            labels = follow_path(base, relative.replace("images", "labels", 1))
            found[split] = YoloDetection(images, labels, names, transforms)
        return DetectionData(found["train"], found["val"], [BACKGROUND, *names], "yolo")
    annotations = sorted((data_dir / "annotations").glob("instances_*.json"))
    if annotations:
        train = [a for a in annotations if "train" in a.stem]
        val = [a for a in annotations if "val" in a.stem]
        if not train or not val:
            raise DataError(f"{data_dir / 'annotations'}: need instances_train*.json and instances_val*.json")
        read = {"train": (train[0], train_transforms), "val": (val[0], val_transforms)}
        found = {split: _coco_split(data_dir, *read[split])[0] if split in splits else None for split in read}
        classes = next(dataset.classes for dataset in found.values() if dataset is not None)
        return DetectionData(found["train"], found["val"], classes, "coco")
    raise DataError(
        f"{data_dir} holds no detection dataset: expected a YOLO data.yaml/config.yaml (with images/ and labels/) "
        "or COCO annotations/instances_*.json"
    )
