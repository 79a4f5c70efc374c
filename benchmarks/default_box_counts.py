"""How many default boxes each object of a detection set overlaps by the matching IoU or more - the boxes it
teaches in training - by COCO's size classes (area in the image's own pixels: small under 32², large over 96²),
with the default boxes of ``ssdlite_mobilenet_v2`` at the training side (docs/benchmarks.md, "Session 26"):

    python benchmarks/default_box_counts.py --classes person [--resolution 512] [--match-iou 0.35]
        [--tall-small-box] [--atss K]

Measured (session 26) on coco128's 254 training people at 512 and 0.35: see docs/benchmarks.md.  An object no
default box reaches still learns its single best box (the matcher forces it); the count is of the others.
``--tall-small-box`` counts with the lowest map's extra tall box of ``detection_ablations.py --tall-small-box``.
``--atss K`` counts the boxes ATSS's assignment of ``detection_ablations.py --atss K`` gives instead (session 27).
Each line also gives the median overlap (IoU) of the boxes counted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parent))  # detection_ablations.py, beside this script

from detection_ablations import atss_matches, map_sizes, tall_small_box  # noqa: E402

import mobilenets  # noqa: E402
from mobilenets.detection.data import find_detection_data  # noqa: E402
from mobilenets.errors import MobileNetsError  # noqa: E402
from mobilenets.validate import POSITIVE_INT, UNIT_FRACTION  # noqa: E402

SIZES = (("small", 0, 32**2), ("medium", 32**2, 96**2), ("large", 96**2, float("inf")))  # COCO's, in pixels²


@torch.no_grad()
def default_boxes(resolution: int) -> tuple[torch.Tensor, list[int], list[int]]:
    """ssdlite_mobilenet_v2's default boxes (x1 y1 x2 y2, fractions of the sides) at ``resolution``, as its
    own anchor generator places them on its own feature maps; with each map's number of default boxes and of
    boxes per position."""
    model = mobilenets.create_model("ssdlite_mobilenet_v2", num_classes=2).eval()
    pixels = torch.zeros(1, 3, resolution, resolution)
    features = list(model.backbone(pixels).values())
    (anchors,) = model.anchor_generator(ImageList(pixels, [(resolution, resolution)]), features)
    per_location = model.anchor_generator.num_anchors_per_location()
    return anchors / resolution, map_sizes(features, per_location), per_location


def object_boxes(targets, anchors: torch.Tensor, match_iou: float, atss=None):
    """Per object, its COCO size class and the overlaps (IoU) of the default boxes it teaches: those it overlaps
    by ``match_iou`` or more, or with ``atss`` = (map sizes, boxes per position, k) those ATSS's assignment
    gives it. ``targets`` are (boxes in pixels, labels, (height, width)) as a detection dataset holds them."""
    for boxes, _, (height, width) in targets:
        if not len(boxes):
            continue
        # the network sees each image resized to a square, so its boxes as fractions of the sides
        scaled = boxes / torch.tensor([width, height, width, height], dtype=boxes.dtype)
        iou = box_iou(scaled, anchors)
        if atss:
            taught = atss_matches(scaled, anchors, *atss)[None, :] == torch.arange(len(boxes))[:, None]
        else:
            taught = iou >= match_iou
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        for area, overlaps, chosen in zip(areas.tolist(), iou, taught):
            yield next(name for name, low, high in SIZES if low <= area < high), overlaps[chosen]


def count_boxes(targets, anchors: torch.Tensor, match_iou: float, atss=None) -> list[tuple[str, list[int]]]:
    """Per size class, each object's number of default boxes it teaches (:func:`object_boxes`)."""
    counts: dict[str, list[int]] = {name: [] for name, _, _ in SIZES}
    for name, overlaps in object_boxes(targets, anchors, match_iou, atss):
        counts[name].append(len(overlaps))
    return list(counts.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data/coco128")
    parser.add_argument("--classes", help="keep these classes (names or ids, comma-separated)")
    parser.add_argument("--split", choices=("train", "val"), default="train")
    parser.add_argument("--resolution", type=POSITIVE_INT.argtype, default=512)
    parser.add_argument("--match-iou", type=UNIT_FRACTION.argtype, default=0.35)
    parser.add_argument("--tall-small-box", action="store_true", help="with detection_ablations.py's extra box")
    parser.add_argument("--atss", type=POSITIVE_INT.argtype, metavar="K",
                        help="count the boxes ATSS's assignment gives (K positions per map) instead")  # fmt: skip
    args = parser.parse_args()
    try:
        data = find_detection_data(args.data_dir, splits=(args.split,), classes=args.classes)
    except MobileNetsError as exc:
        parser.error(str(exc))
    if args.tall_small_box:
        tall_small_box()
    anchors, sizes, per_location = default_boxes(args.resolution)
    atss = (sizes, per_location, args.atss) if args.atss else None
    split = data.train if args.split == "train" else data.val
    rule = f"ATSS's boxes (k = {args.atss})" if atss else f"default boxes at IoU >= {args.match_iou}"
    print(f"{len(anchors)} default boxes at {args.resolution} px; objects of {args.split} by COCO size, {rule}:")
    overlaps: dict[str, list[float]] = {name: [] for name, _, _ in SIZES}
    for name, taught in object_boxes(split.targets, anchors, args.match_iou, atss):
        overlaps[name] += taught.tolist()
    for name, reached in count_boxes(split.targets, anchors, args.match_iou, atss):
        if reached:
            ordered, ious = sorted(reached), sorted(overlaps[name])
            iou = f", their median IoU {ious[len(ious) // 2]:.2f}" if ious else ""
            print(f"  {name:6s} {len(reached):4d} objects: median {ordered[len(ordered) // 2]}, "
                  f"none {sum(n == 0 for n in reached)}, mean {sum(reached) / len(reached):.1f}{iou}")  # fmt: skip


if __name__ == "__main__":
    main()
