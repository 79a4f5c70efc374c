"""Where a detector's validation mistakes are: the objects it finds by size, and what its confident
false positives are (docs/benchmarks.md, "One class").

    python benchmarks/detection_errors.py runs/person-512/best.pt --data-dir ../shared/data/coco128 \
        --classes person [--resolution R] [--score 0.3]

Objects are small, medium or large by COCO's thresholds (the square root of the box area in pixels of the
original image: under 32, 32-96, over 96). A detection at ``--score`` or above, taken in score order, is a
true positive if it overlaps an object not yet found by IoU 0.5 (COCO's mAP50 rule), a duplicate if its
object was found already, *inside* if it overlaps an object by 0.1-0.5 and lies 80 % or more within it (a
part of the object), *misplaced* if it overlaps one by 0.1-0.5 otherwise (a box off its object, or over
several), and *background* under 0.1.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torchvision.ops import box_iou

SIZES = (("small", 0.0, 32.0), ("medium", 32.0, 96.0), ("large", 96.0, float("inf")))


def recall_by_size(found: list[tuple[float, float]], threshold: float) -> dict[str, tuple[int, float]]:
    """For each size: the number of objects and the share a detection overlaps by ``threshold``.
    ``found`` holds (object size, its best IoU with a kept detection)."""
    table = {}
    for name, low, high in SIZES:
        ious = [iou for size, iou in found if low <= size < high]
        table[name] = (len(ious), sum(iou >= threshold for iou in ious) / max(1, len(ious)))
    return table


def kind_of(detection: torch.Tensor, objects: torch.Tensor, overlaps: torch.Tensor, taken: set[int]) -> str:
    if not len(objects):
        return "background"
    best = int(overlaps.argmax())
    iou = float(overlaps[best])
    if iou >= 0.5:
        if best in taken:
            return "duplicate"
        taken.add(best)
        return "true positive"
    if iou < 0.1:
        return "background"
    box = objects[best]
    inside = (torch.min(detection[2:], box[2:]) - torch.max(detection[:2], box[:2])).clamp(min=0).prod()
    return "inside" if inside / (detection[2:] - detection[:2]).prod() >= 0.8 else "misplaced"


def main() -> int:
    from mobilenets.detection.data import detection_transforms, find_detection_data
    from mobilenets.models.registry import load_model
    from mobilenets.validate import POSITIVE_INT, PROBABILITY

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--classes")
    parser.add_argument("--resolution", type=POSITIVE_INT.argtype, help="score the detector rebuilt at this side (default: its own)")
    parser.add_argument("--score", type=PROBABILITY.argtype, default=0.3)
    args = parser.parse_args()
    # a detector resizes its input itself: the side is the model's, and the evaluation transform keeps the images
    side = {"resolution": args.resolution} if args.resolution else {}
    model = load_model(args.checkpoint, **side).eval()
    transforms = detection_transforms("ssdlite", model.transform.fixed_size[0], train=False, fill=(0.5, 0.5, 0.5))
    data = find_detection_data(args.data_dir, val_transforms=transforms, splits=("val",), classes=args.classes)
    found, kinds = [], {}
    with torch.inference_mode():
        for index in range(len(data.val)):
            image, target = data.val[index]
            detections = model([image])[0]
            keep = detections["boxes"][detections["scores"] >= args.score]
            objects = target["boxes"]
            overlaps = box_iou(keep, objects) if len(keep) and len(objects) else torch.zeros(len(keep), len(objects))
            sides = ((objects[:, 2:] - objects[:, :2]).prod(1)).sqrt().tolist()
            found += [(side, float(overlaps[:, k].max()) if len(keep) else 0.0) for k, side in enumerate(sides)]
            taken: set[int] = set()
            for d in range(len(keep)):
                kind = kind_of(keep[d], objects, overlaps[d], taken)
                kinds[kind] = kinds.get(kind, 0) + 1
    print(f"{len(found)} objects in {len(data.val)} validation images; detections scoring {args.score} or more")
    for threshold in (0.5, 0.3):
        cells = ", ".join(
            f"{name} {share:.0%} of {count}" for name, (count, share) in recall_by_size(found, threshold).items()
        )
        print(f"found at IoU {threshold}: {cells}")
    print(
        f"{sum(kinds.values())} detections: "
        + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
    )
    return 0


if __name__ == "__main__":
    from mobilenets.errors import MobileNetsError

    try:
        sys.exit(main())
    except MobileNetsError as exc:  # a missing checkpoint, a data folder without the split: one line
        print(f"detection_errors.py: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        raise SystemExit(2) from None
