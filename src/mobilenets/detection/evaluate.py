"""COCO box metrics computed by pycocotools' ``COCOeval`` - the evaluator COCO's own
leaderboard uses - not by a hand-written AP.

Ground truth is what the validation loader yields (boxes in the images' own pixels,
``iscrowd`` 0, area = box area), predictions are the detector's boxes mapped back to
those pixels.  ``map`` is AP averaged over IoU 0.50:0.05:0.95 (COCO's headline
number), ``map50`` at IoU 0.5, ``map75`` at 0.75, ``map_small/medium/large`` by box area.

With ``flip`` (``--test-flip``), each image is also run mirrored, and with ``tiles`` on the tiles of
each level (``--test-tiles``: ``CORNER_TILES``, its four corner tiles); all passes' candidate boxes are
suppressed together and each kept box averaged with those it suppressed (:func:`detect_with_views`,
:func:`voted_boxes`).
The mirror image doubles the evaluation's cost, for a network whose boxes vary between an image and
its mirror image; the tiles multiply it by five, for people too small in the whole image
(docs/benchmarks.md, "One class").
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou

from ..errors import ConfigError
from ..extras import require
from ..validate import UNIT_FRACTION

__all__ = [
    "COCO_STATS",
    "CORNER_TILES",
    "TileLevel",
    "coco_metrics",
    "detect_with_views",
    "evaluate_detector",
    "every_candidate",
    "voted_boxes",
]

# COCOeval.stats, in its order.
COCO_STATS = ("map", "map50", "map75", "map_small", "map_medium", "map_large")


def _xywh(boxes: Tensor) -> list[list[float]]:
    boxes = boxes.detach().float().cpu()
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()


def coco_metrics(
    targets: list[dict[str, Tensor]], predictions: list[dict[str, Tensor]], num_classes: int
) -> dict[str, float]:
    """COCO AP of ``predictions`` against ``targets`` (one dict per image, same order;
    ``boxes`` x1 y1 x2 y2, ``labels``, and ``scores`` for predictions)."""
    COCO = require("pycocotools.coco", "COCO metrics", "detection").COCO
    COCOeval = require("pycocotools.cocoeval", "COCO metrics", "detection").COCOeval
    if not targets:
        raise ConfigError("the validation set is empty")
    images, annotations, detections = [], [], []
    for image_id, (target, prediction) in enumerate(zip(targets, predictions)):
        images.append({"id": image_id})
        for box, label in zip(_xywh(target["boxes"]), target["labels"].tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})  # fmt: skip
        for box, label, score in zip(
            _xywh(prediction["boxes"]), prediction["labels"].tolist(), prediction["scores"].tolist()
        ):
            detections.append({"image_id": image_id, "category_id": label, "bbox": box, "score": score})
    ground_truth = COCO()
    ground_truth.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c} for c in range(1, num_classes)],
    }
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ground_truth.createIndex()
        if not detections or not annotations:
            return dict.fromkeys(COCO_STATS, 0.0 if annotations else -1.0)
        result = ground_truth.loadRes(detections)
        evaluation = COCOeval(ground_truth, result, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # -1 is COCOeval's "no boxes of this size"; kept as is, as COCO reports it
    return {key: float(value) for key, value in zip(COCO_STATS, evaluation.stats)}


@contextlib.contextmanager
def every_candidate(model):
    """``model`` with its NMS and its cap on detections per image off (each image's candidates above
    the score threshold, per class its top ones, for a suppression of one's own); yields its own (NMS
    IoU, cap).  A PyTorch detector keeps them as attributes, an exported one (``export.detection``)
    in ``settings``."""
    settings = getattr(model, "settings", None)
    if settings is None:
        own = (model.nms_thresh, model.detections_per_img)
        model.nms_thresh, model.detections_per_img = 1.0, 1_000_000  # no IoU exceeds 1: nothing suppressed
        try:
            yield own
        finally:
            model.nms_thresh, model.detections_per_img = own
    else:
        model.settings = {**settings, "nms_thresh": 1.0, "detections_per_img": 1_000_000}
        try:
            yield settings["nms_thresh"], settings["detections_per_img"]
        finally:
            model.settings = settings


TILE_EDGE_PX = 2.0  # a box this close to a tile side inside the image is taken as cut by it


@dataclass(frozen=True)
class TileLevel:
    """One level of tiles for test-time views: a ``per_side`` x ``per_side`` grid of tiles, each ``side``
    of the image's height and width, spread evenly from one edge to the other (they overlap where
    ``per_side * side > 1``) and scored at the network's input side, so a small object fills more of it.
    A tile keeps its boxes under ``keeps_under`` of the image's sides that are clear of every tile side
    lying inside the image (within ``TILE_EDGE_PX``): a larger object, or one cut by that side, is a
    larger view's to find."""

    per_side: int
    side: float
    keeps_under: float

    def __post_init__(self):
        # one tile per side would be the image itself (and no spacing to spread tiles by)
        if not (isinstance(self.per_side, int) and self.per_side >= 2):
            raise ConfigError(f"TileLevel: per_side must be an integer >= 2, got {self.per_side!r}")
        for name in ("side", "keeps_under"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"TileLevel: {name} must be in (0, 1], got {getattr(self, name)!r}")

    def tiles(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """(top, left, height, width) of each tile of an image ``height`` x ``width``."""
        tall, wide = round(height * self.side), round(width * self.side)
        tops = [round(i * (height - tall) / (self.per_side - 1)) for i in range(self.per_side)]
        lefts = [round(i * (width - wide) / (self.per_side - 1)) for i in range(self.per_side)]
        return [(top, left, tall, wide) for top in tops for left in lefts]

    def keep(self, boxes: Tensor, tile: tuple[int, int, int, int], height: int, width: int) -> Tensor:
        """Which of a tile's ``boxes`` (in the tile's pixels) it keeps."""
        top, left, tall, wide = tile
        limit = self.keeps_under
        keep = ((boxes[:, 2] - boxes[:, 0]) < limit * width) & ((boxes[:, 3] - boxes[:, 1]) < limit * height)
        if left > 0:
            keep &= boxes[:, 0] > TILE_EDGE_PX
        if top > 0:
            keep &= boxes[:, 1] > TILE_EDGE_PX
        if left + wide < width:
            keep &= boxes[:, 2] < wide - TILE_EDGE_PX
        if top + tall < height:
            keep &= boxes[:, 3] < tall - TILE_EDGE_PX
        return keep


# --test-tiles: the image's four corner tiles, each 0.6 of its height and width (neighbours overlap by
# 0.2 of the side, so a person up to that size lies whole in one of them), keeping boxes under 0.4 of the
# image's sides (coco128's people: every tile box kept, 20.3 % mAP50 against 27.1; boxes up to 0.5 of the
# sides, 2.3-2.8 points below 0.4 on three runs - docs/benchmarks.md, "Session 22").  A second level (a
# 3x3 grid of 0.4) added 0.4 points on average for 2.8 times the cost, so it is not the default.
CORNER_TILES = (TileLevel(per_side=2, side=0.6, keeps_under=0.4),)


def voted_boxes(boxes: Tensor, scores: Tensor, labels: Tensor, kept: Tensor, iou: float) -> Tensor:
    """The boxes NMS ``kept`` (indices, best first, at IoU ``iou``; its first N will do), each replaced by
    the score-weighted mean of itself and the boxes it suppressed - the box voting after NMS of Gidaris &
    Komodakis (ICCV 2015).  Views of one image put near-copies of each box in the pool; NMS keeps the
    best-scored one, voting averages them (coco128's people with the tiles and the mirror image: +2.0 points
    of mAP50 over NMS on average over four checkpoints, +1.1 to +2.8 - docs/benchmarks.md, "Session 24").
    Scores and labels stay the kept boxes' own."""
    voted = boxes[kept].clone()
    for label in labels[kept].unique():
        pool = (labels == label).nonzero().flatten()
        heads = (labels[kept] == label).nonzero().flatten()
        # a box belongs to the best kept box it overlaps, the one that suppressed it (kept boxes overlap
        # each other by at most ``iou``; a box whose suppressor is not among ``kept`` overlaps none of
        # them); a kept box always votes for itself, even at ``iou`` 1 where no overlap exceeds it
        member = box_iou(boxes[pool], boxes[kept[heads]]) > iou
        member |= pool[:, None] == kept[heads][None, :]
        voter = member.any(1)
        pool, head = pool[voter], member[voter].to(torch.uint8).argmax(1)
        weight = scores[pool]
        total = weight.new_zeros(len(heads)).index_add_(0, head, weight)
        # the mean as the kept box plus its voters' mean offset from it: a box alone stays exactly itself
        offsets = (boxes[pool] - voted[heads][head]) * weight[:, None]
        voted[heads] += boxes.new_zeros(len(heads), 4).index_add_(0, head, offsets) / total[:, None]
    return voted


@torch.no_grad()
def detect_with_views(
    model,
    images: list[Tensor],
    *,
    flip: bool = False,
    tiles: Sequence[TileLevel] = (),
    vote: bool = True,
    vote_iou: float | None = None,
):
    """Each image's detections found on several views of it together (test-time augmentation): the
    image, with ``flip`` its mirror image, and the tiles of each level in ``tiles`` (``CORNER_TILES``:
    the four corner tiles), mirrored too with ``flip``; each tile keeps the boxes its level keeps.
    Every view's candidates (each above the score threshold, per class its top candidates) are turned
    back into the image's pixels and pooled, and the detector's own NMS and cap applied once; with
    ``vote`` each kept box becomes the score-weighted mean of those it suppressed (:func:`voted_boxes`),
    or with ``vote_iou`` of those overlapping it by more than that instead of the NMS's own IoU."""
    if isinstance(tiles, bool) or not all(isinstance(level, TileLevel) for level in tiles):
        raise ConfigError(f"tiles takes levels of tiles (TileLevel; CORNER_TILES for --test-tiles' four corner "
                          f"tiles), got {tiles!r}")  # fmt: skip
    if vote_iou is not None:
        UNIT_FRACTION.check(vote_iou, "vote_iou")
    views = []  # (image index, view, (level, tile) or None, mirrored)
    for index, image in enumerate(images):
        height, width = image.shape[-2:]
        crops = [(image, None)] + [(image[:, t:t + h, s:s + w], (level, (t, s, h, w))) for level in tiles
                                   for t, s, h, w in level.tiles(height, width)]  # fmt: skip
        for crop, tile in crops:
            views += [(index, crop, tile, False)] + ([(index, crop.flip(-1), tile, True)] if flip else [])
    # on a CPU one view per pass: a batch of 512x512 views allocates activations too large for the C
    # allocator to keep for reuse, so each pass maps fresh memory (coco128's validation with tiles and the
    # mirror image, Intel Xeon: 50.0 s one view per pass, 78.1 s sixteen, of which 62.6 s system time)
    per_pass = len(images) if images and images[0].device.type != "cpu" else 1
    with every_candidate(model) as (nms, kept):
        found = [box for start in range(0, len(views), per_pass)
                 for box in model([view for _, view, _, _ in views[start:start + per_pass]])]  # fmt: skip
    pooled: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in images]
    for (index, view, tile, mirrored), own in zip(views, found):
        boxes = own["boxes"].clone()
        if mirrored:
            boxes[:, [0, 2]] = view.shape[-1] - own["boxes"][:, [2, 0]]
        keep = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
        if tile is not None:
            level, place = tile
            keep = level.keep(boxes, place, *images[index].shape[-2:])
            top, left = place[:2]
            boxes += torch.tensor([left, top, left, top], dtype=boxes.dtype, device=boxes.device)
        pooled[index].append((boxes[keep], own["scores"][keep], own["labels"][keep]))
    results = []
    for parts in pooled:
        boxes, scores, labels = (torch.cat(part) for part in zip(*parts))
        keep = batched_nms(boxes, scores, labels, nms)[:kept]
        found = voted_boxes(boxes, scores, labels, keep, nms if vote_iou is None else vote_iou) if vote else boxes[keep]
        results.append({"boxes": found, "scores": scores[keep], "labels": labels[keep]})
    return results


@torch.no_grad()
def evaluate_detector(
    model: nn.Module,
    loader,
    device: str = "cpu",
    *,
    dist=None,
    progress: bool = False,
    flip: bool = False,
    tiles: Sequence[TileLevel] = (),
    vote: bool = True,
):
    """Run ``model`` over ``loader`` (images, targets) and score it with :func:`coco_metrics`;
    under torchrun each process passes its shard and the predictions are gathered.  ``flip``,
    ``tiles``, ``vote``: each image's detections are :func:`detect_with_views`'
    with those views."""
    from tqdm.auto import tqdm

    model.eval()
    targets: list[dict[str, Tensor]] = []
    predictions: list[dict[str, Tensor]] = []
    views = {"flip": flip, "tiles": tiles, "vote": vote}
    start = time.perf_counter()
    for images, batch_targets in tqdm(loader, desc="evaluating", disable=not progress, leave=False, unit="batch"):
        images = [image.to(device) for image in images]
        outputs = detect_with_views(model, images, **views) if flip or tiles else model(images)
        for target, output in zip(batch_targets, outputs):
            targets.append({"boxes": target["boxes"].as_subclass(Tensor).cpu(), "labels": target["labels"].cpu()})
            predictions.append({k: output[k].cpu() for k in ("boxes", "scores", "labels")})
    elapsed = time.perf_counter() - start
    if dist is not None and dist.enabled:
        gathered: list[Any] = [None] * dist.world_size
        torch.distributed.all_gather_object(gathered, (targets, predictions))
        targets = [t for part in gathered for t in part[0]]
        predictions = [p for part in gathered for p in part[1]]
    num_classes = model.head.classification_head.num_columns if hasattr(model, "head") else None
    if num_classes is None:
        num_classes = 1 + max([int(t["labels"].max()) for t in targets if len(t["labels"])] or [1])
    metrics = coco_metrics(targets, predictions, num_classes)
    metrics["images"] = len(targets)
    metrics["images_per_s"] = len(targets) / elapsed if elapsed > 0 else 0.0
    metrics["boxes"] = sum(len(t["labels"]) for t in targets)
    return metrics
