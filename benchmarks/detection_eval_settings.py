"""Does a detector's evaluation hide mAP? A trained checkpoint re-scored on coco128's validation split
with other post-processing (score threshold, detections kept, NMS IoU) and at other input sizes, and the
validation objects counted by COCO's size classes (docs/benchmarks.md, "One class: coco128's people"):

    python benchmarks/detection_eval_settings.py runs/person-512/best.pt 512,576 [--data-dir ../shared/data/coco128]

Measured (AMD EPYC Zen 5, session 9): the 512-pixel person run's best.pt 17.57 % mAP50 as trained
(threshold 0.01, 200 detections, NMS 0.45), 17.57 / 16.28 / 16.21 % with 0.001, 300 and NMS 0.45 / 0.55 / 0.6;
the 448-pixel run's 16.99 % as trained, 17.11 % at best (NMS 0.55), 15.24-16.27 % at 512 and 10.45-11.13 %
at 576 pixels.  coco128's 350 validation people: 103 small, 111 medium, 136 large.

``--merge`` adds rows at the trained size with two test-time levers: the image and its mirror image scored
together (their boxes pooled before the suppression), and Gaussian soft-NMS (Bodla et al. 2017: a box
overlapping a kept one has its score multiplied by exp(-IoU^2 / sigma) instead of being dropped - people in
crowds overlap), each alone and both:

    python benchmarks/detection_eval_settings.py runs/person-512/best.pt 512 --merge

Measured (AMD EPYC Zen 4, session 21; docs/benchmarks.md "Session 21"): the default person run 24.07 % mAP50,
25.06 with the mirror image, 24.85 with soft-NMS, 25.72 with both; over three seeds of the stride-8 layout
(``detection_ablations.py --stride-8``) 25.69 % as trained, 27.48 with the mirror image, 25.09 with soft-NMS.
The mirror image became ``--test-flip`` (``mobilenets.detection.evaluate.detect_with_views``); soft-NMS stayed here.

``--tiles`` adds the rows with the image's four corner tiles (``--test-tiles``: each 0.6 of the sides, its boxes
kept when under ``CORNER_TILES``' 0.4 of the image's sides and clear of the sides it shares with other tiles), alone
and with the mirror image; ``--tile-keeps-under 0.3,0.4,0.5`` repeats them at other limits:

    python benchmarks/detection_eval_settings.py runs/person-512/best.pt 512 --tiles --tile-keeps-under 0.3,0.4,0.5

Measured (AMD EPYC Zen 4, session 22; docs/benchmarks.md "Session 22"): the default person run's three seeds,
mAP50 25.12 % on average as trained, 26.30 with the mirror image, 27.62 with the tiles (limit 0.4), 27.71 with
both; on seed 0 the limit 0.3 / 0.4 / 0.5 gave 25.93 / 27.14 / 24.82 %, and no limit with no side rule 20.31 %.

Each view row is printed with the views' boxes merged by NMS and by box voting (``--test-merge``, the default
since session 24; ``detection.evaluate.voted_boxes``).  Measured (Intel Xeon with AMX, session 24;
docs/benchmarks.md "Session 24"): with the tiles and the mirror image, 26.40 -> 28.65 % mAP50 for the fp32 run's
seed 0, 27.27 -> 29.23 % on average over three seeds of the bf16 command.

``--voting`` adds the rows behind what was not adopted (``VotingDetector``): box voting on the image alone (the
detector's own single view), voting among boxes overlapping by ``--vote-iou`` instead of the NMS's own 0.45, and a
second level of tiles - a ``--grid``×``--grid`` grid of tiles ``--grid-tile`` of the sides beside the four corner
tiles (``grid_level``: a library ``TileLevel``), each keeping boxes under 2/3 of its own sides and clear of the
sides it shares (with the mirror image, 28 passes per image instead of 10):

    python benchmarks/detection_eval_settings.py runs/person-512-bf16-s0/best.pt 512 --voting

Measured (Intel Xeon with AMX, session 25; docs/benchmarks.md "Session 25"): the bf16 command's seed 0, 25.97 %
mAP50 as trained, 27.18 with voting on the image alone; 30.90 with the mirror image and tiles voted at 0.45, 31.35
at 0.5; with the 3x3 grid 28.36 by NMS, 29.22 with the mirror image, 31.39 voted (session 26, the grid as a library
``TileLevel``: the same figures, 28.42 voted without the mirror image; 44 min for the whole command).  Over three
seeds voting at 0.5 gives 29.47 % against 0.45's 29.23 (``--no-grid --vote-iou 0.5,0.6``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools

import torch
from torch import nn
from torchvision.ops import box_iou

from mobilenets.data import make_loader
from mobilenets.detection.data import collate, detection_transforms, find_detection_data
from mobilenets.detection.evaluate import (
    CORNER_TILES,
    TileLevel,
    detect_with_views,
    evaluate_detector,
    every_candidate,
)
from mobilenets.errors import MobileNetsError
from mobilenets.models import load_model_with_info
from mobilenets.validate import POSITIVE_INT, UNIT_FRACTION, Rule, csv_of

SETTINGS = ((0.01, 0.45, 200), (0.001, 0.45, 300), (0.001, 0.55, 300), (0.001, 0.6, 300))
SOFT_NMS_SIGMA = 0.5  # the paper's Gaussian sigma


def soft_nms(boxes, scores, labels, *, sigma: float, threshold: float, kept: int):
    """Indices kept by Gaussian soft-NMS within each class, best first, with their decayed scores."""
    order, decayed = [], scores.clone()
    for label in labels.unique():
        alive = (labels == label).nonzero().flatten()
        while len(alive) and len(order) < 10 * kept:
            best = alive[decayed[alive].argmax()]
            order.append(int(best))
            alive = alive[alive != best]
            overlap = box_iou(boxes[best][None], boxes[alive])[0]
            decayed[alive] *= torch.exp(-(overlap**2) / sigma)
            alive = alive[decayed[alive] > threshold]
    order = torch.tensor(order, dtype=torch.long)
    order = order[decayed[order].argsort(descending=True)][:kept]
    return order, decayed[order]


class SoftNMSDetector(nn.Module):
    """A trained SSD whose candidates - from the image and, with ``flip``, its mirror image pooled as
    ``--test-flip`` pools them - are suppressed by Gaussian soft-NMS instead of its NMS, under its own cap."""

    def __init__(self, model: nn.Module, *, flip: bool):
        super().__init__()
        self.model, self.head, self.flip = model, model.head, flip

    def forward(self, images):
        with every_candidate(self.model) as (_, kept):
            # the views' raw candidates, for soft-NMS to suppress (no NMS, so nothing to vote on)
            outputs = detect_with_views(self.model, images, flip=True, vote=False) if self.flip else self.model(images)
        results = []
        for output in outputs:
            keep, scores = soft_nms(output["boxes"], output["scores"], output["labels"], sigma=SOFT_NMS_SIGMA,
                                    threshold=self.model.score_thresh, kept=kept)  # fmt: skip
            results.append({"boxes": output["boxes"][keep], "scores": scores, "labels": output["labels"][keep]})
        return results


GRID_KEEPS_UNDER = 2 / 3  # of a grid tile's own sides: a larger person is a larger view's to find
GRID_SIDE = Rule(int, lambda v: v >= 2, "an integer >= 2")  # tiles per side: one would be the image


def grid_level(per_side: int, side: float) -> TileLevel:
    """The second level of tiles of ``--voting``: ``per_side`` x ``per_side`` tiles ``side`` of the image's
    sides, each keeping boxes under ``GRID_KEEPS_UNDER`` of its own sides."""
    return TileLevel(per_side=per_side, side=side, keeps_under=GRID_KEEPS_UNDER * side)


class VotingDetector(nn.Module):
    """A trained SSD scored on the views ``detect_with_views`` pools (``flip``, the levels of ``tiles``), their
    candidates suppressed by the detector's NMS and, with ``vote_iou``, each kept box voted on by the boxes it
    overlaps by more than that (``voted_boxes``) - on the image alone too, where the detector would not vote."""

    def __init__(self, model: nn.Module, *, flip: bool, tiles=(), vote_iou=None):
        super().__init__()
        self.model, self.head = model, model.head
        self.flip, self.tiles, self.vote_iou = flip, tuple(tiles), vote_iou

    def forward(self, images):
        return detect_with_views(self.model, images, flip=self.flip, tiles=self.tiles,
                                 vote=self.vote_iou is not None, vote_iou=self.vote_iou)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("sizes", type=csv_of(POSITIVE_INT), help="input sides to score at, comma-separated")
    parser.add_argument("--data-dir", default="../shared/data/coco128")
    parser.add_argument("--merge", action="store_true", help="add the flip / soft-NMS rows at the trained size")
    parser.add_argument("--tiles", action="store_true",
                        help="add the corner-tile rows (--test-tiles) at the trained size")  # fmt: skip
    parser.add_argument("--tile-keeps-under", type=csv_of(UNIT_FRACTION), default=[CORNER_TILES[0].keeps_under],
                        help="with --tiles: the largest box a tile keeps, as a fraction of the image's sides "
                        f"(default {CORNER_TILES[0].keeps_under}; several, comma-separated)")  # fmt: skip
    parser.add_argument("--voting", action="store_true",
                        help="add the rows of voting alone, at --vote-iou, and with a --grid of tiles")  # fmt: skip
    parser.add_argument(
        "--vote-iou",
        type=csv_of(UNIT_FRACTION),
        default=[0.5],
        help="with --voting: voting IoUs beside the NMS's own (default 0.5; several, comma-separated)",
    )
    parser.add_argument("--no-grid", action="store_true", help="with --voting: leave out the grid's rows")
    parser.add_argument("--grid", type=GRID_SIDE.argtype, default=3, help="with --voting: tiles per side (default 3)")
    parser.add_argument("--grid-tile", type=UNIT_FRACTION.argtype, default=0.4,
                        help="with --voting: a grid tile's share of the image's sides (default 0.4)")  # fmt: skip
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
    if args.merge:
        score_merged(model, loader, info["resolution"])
    if args.tiles:
        score_tiled(model, loader, info["resolution"], args.tile_keeps_under)
    if args.voting:
        score_voting(
            model, loader, info["resolution"], args.vote_iou, None if args.no_grid else (args.grid, args.grid_tile)
        )


def score_merged(model: nn.Module, loader, side: int) -> None:
    """At the trained size and settings: the image alone and with its mirror image (``--test-flip``), each
    suppressed by the detector's NMS, then by soft-NMS."""
    model.transform.min_size, model.transform.max_size, model.transform.fixed_size = (side,), side, (side, side)
    model.score_thresh, model.nms_thresh, model.detections_per_img = SETTINGS[0]
    # (soft-NMS, mirror image, box voting): voting merges views, so it has a row with the mirror image only
    rows = ((False, False, False), (False, True, False), (False, True, True), (True, False, False), (True, True, False))
    for soft, flip, vote in rows:
        scored = SoftNMSDetector(model, flip=flip) if soft else model
        metrics = evaluate_detector(scored, loader, flip=flip and not soft, vote=vote)
        suppression = "soft-NMS" if soft else f"NMS {model.nms_thresh}" + " with box voting" * vote
        print(f"{side} px, {'image + mirror' if flip else 'image'}, {suppression}: "
              f"mAP50 {100 * metrics['map50']:.2f} %, mAP {100 * metrics['map']:.2f} %", flush=True)  # fmt: skip


def score_tiled(model: nn.Module, loader, side: int, limits: list[float]) -> None:
    """At the trained size and settings: the image with its corner tiles (``--test-tiles``), without and with
    its mirror image, for each limit on the size of the boxes a tile keeps, merged by NMS and by box voting."""
    model.transform.min_size, model.transform.max_size, model.transform.fixed_size = (side,), side, (side, side)
    model.score_thresh, model.nms_thresh, model.detections_per_img = SETTINGS[0]
    for limit in limits:
        for flip, vote in itertools.product((False, True), (False, True)):
            tiles = (dataclasses.replace(CORNER_TILES[0], keeps_under=limit),)
            metrics = evaluate_detector(model, loader, flip=flip, tiles=tiles, vote=vote)
            views = (f"{'image + mirror' if flip else 'image'} + tiles (boxes under {limit} kept), "
                     f"{'box voting' if vote else 'NMS'}")  # fmt: skip
            print(f"{side} px, {views}: mAP50 {100 * metrics['map50']:.2f} %, mAP {100 * metrics['map']:.2f} %",
                  flush=True)  # fmt: skip


def score_voting(model: nn.Module, loader, side: int, vote_ious: list[float], grid) -> None:
    """At the trained size and settings: box voting on the image alone; on the image, its mirror image and
    its corner tiles at the NMS's IoU and at each of ``vote_ious``; and unless ``grid`` is None, with a second
    level of tiles, a ``grid`` (tiles per side, their share of the sides), merged by NMS and by voting."""
    model.transform.min_size, model.transform.max_size, model.transform.fixed_size = (side,), side, (side, side)
    model.score_thresh, model.nms_thresh, model.detections_per_img = SETTINGS[0]
    nms = model.nms_thresh
    # (views' name, flip, levels of tiles, vote IoU)
    rows = [("image", False, (), None), ("image", False, (), nms)]
    rows += [("image + mirror + tiles", True, CORNER_TILES, iou) for iou in (nms, *vote_ious)]
    if grid is not None:
        grid_name = f"tiles + {grid[0]}x{grid[0]} grid of {grid[1]}"
        rows += [(f"image + {views}{grid_name}", flip, (*CORNER_TILES, grid_level(*grid)), iou)
                 for views, flip in (("", False), ("mirror + ", True)) for iou in (None, nms)]  # fmt: skip
    for views, flip, tiles, iou in rows:
        metrics = evaluate_detector(VotingDetector(model, flip=flip, tiles=tiles, vote_iou=iou), loader)
        merge = f"NMS {nms}" if iou is None else f"NMS {nms}, box voting at IoU {iou}"
        print(f"{side} px, {views}, {merge}: mAP50 {100 * metrics['map50']:.2f} %, mAP {100 * metrics['map']:.2f} %",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
