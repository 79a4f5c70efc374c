"""Does a detector's evaluation hide mAP? A trained checkpoint re-scored on coco128's validation split
with other post-processing (score threshold, detections kept, NMS IoU) and at other input sizes, and the
validation objects counted by COCO's size classes (docs/benchmarks.md, "One class: coco128's people"):

    python benchmarks/detection_eval_settings.py runs/person-512/best.pt 512,576 [--data-dir ../shared/data/coco128]

Measured (AMD EPYC Zen 5, session 9): the 512-pixel person run's best.pt 17.57 % mAP50 as trained
(threshold 0.01, 200 detections, NMS 0.45), 17.57 / 16.28 / 16.21 % with 0.001, 300 and NMS 0.45 / 0.55 / 0.6;
the 448-pixel run's 16.99 % as trained, 17.11 % at best (NMS 0.55), 15.24-16.27 % at 512 and 10.45-11.13 %
at 576 pixels.  coco128's 350 validation people: 103 small, 111 medium, 136 large.
"""

from __future__ import annotations

import argparse

import torch

from mobilenets.data import make_loader
from mobilenets.detection.data import collate, detection_transforms, find_detection_data
from mobilenets.detection.evaluate import evaluate_detector
from mobilenets.errors import MobileNetsError
from mobilenets.models import load_model_with_info
from mobilenets.validate import POSITIVE_INT, csv_of

SETTINGS = ((0.01, 0.45, 200), (0.001, 0.45, 300), (0.001, 0.55, 300), (0.001, 0.6, 300))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("sizes", type=csv_of(POSITIVE_INT), help="input sides to score at, comma-separated")
    parser.add_argument("--data-dir", default="../shared/data/coco128")
    args = parser.parse_args()
    try:
        model, info = load_model_with_info(args.checkpoint)
        plain = detection_transforms("ssdlite", info["resolution"], train=False, fill=(0.5, 0.5, 0.5))
        data = find_detection_data(args.data_dir, train_transforms=plain, val_transforms=plain, splits=("val",),
                                   classes=info.get("selected_classes"))  # fmt: skip
    except MobileNetsError as exc:
        parser.error(str(exc))
    model.eval()
    areas = torch.cat([(t[0][:, 2] - t[0][:, 0]) * (t[0][:, 3] - t[0][:, 1]) for t in data.val.targets])
    small, large = int((areas < 32**2).sum()), int((areas >= 96**2).sum())
    print(f"{len(areas)} validation objects: {small} small, {len(areas) - small - large} medium, {large} large")
    loader = make_loader(data.val, 16, workers=0, collate_fn=collate)
    for side in args.sizes:
        model.transform.min_size, model.transform.max_size, model.transform.fixed_size = (side,), side, (side, side)
        for threshold, nms, kept in SETTINGS:
            model.score_thresh, model.nms_thresh, model.detections_per_img = threshold, nms, kept
            metrics = evaluate_detector(model, loader)
            print(f"{side} px, score > {threshold}, NMS {nms}, {kept} kept: mAP50 {100 * metrics['map50']:.2f} %, "
                  f"mAP {100 * metrics['map']:.2f} %", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
