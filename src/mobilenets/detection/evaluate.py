"""COCO box metrics computed by pycocotools' ``COCOeval`` - the evaluator COCO's own
leaderboard uses - not by a hand-written AP.

Ground truth is what the validation loader yields (boxes in the images' own pixels,
``iscrowd`` 0, area = box area), predictions are the detector's boxes mapped back to
those pixels.  ``map`` is AP averaged over IoU 0.50:0.05:0.95 (COCO's headline
number), ``map50`` at IoU 0.5, ``map75`` at 0.75, ``map_small/medium/large`` by box area.

With ``flip`` (``--test-flip``), each image is also run mirrored and both passes' candidate boxes
are suppressed together (:func:`detect_with_mirror`): twice the evaluation's cost, for a network
whose boxes vary between an image and its mirror image (docs/benchmarks.md, "One class").
"""

from __future__ import annotations

import contextlib
import io
import time
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from ..errors import ConfigError
from ..extras import require

__all__ = ["COCO_STATS", "coco_metrics", "detect_with_mirror", "evaluate_detector", "every_candidate"]

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


@torch.no_grad()
def detect_with_mirror(model, images: list[Tensor]) -> list[dict[str, Tensor]]:
    """Each image's detections found on it and on its mirror image together (test-time flip):
    both passes' candidates (each above the score threshold, per class its top candidates) are
    pooled, the mirrored boxes turned back, and the detector's own NMS and cap applied once."""
    with every_candidate(model) as (nms, kept):
        found = model(images)
        mirrored = model([image.flip(-1) for image in images])
    results = []
    for image, own, other in zip(images, found, mirrored):
        turned = other["boxes"].clone()
        turned[:, [0, 2]] = image.shape[-1] - other["boxes"][:, [2, 0]]
        boxes = torch.cat([own["boxes"], turned])
        scores, labels = torch.cat([own["scores"], other["scores"]]), torch.cat([own["labels"], other["labels"]])
        keep = batched_nms(boxes, scores, labels, nms)[:kept]
        results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return results


@torch.no_grad()
def evaluate_detector(
    model: nn.Module, loader, device: str = "cpu", *, dist=None, progress: bool = False, flip: bool = False
):
    """Run ``model`` over ``loader`` (images, targets) and score it with :func:`coco_metrics`;
    under torchrun each process passes its shard and the predictions are gathered.  ``flip``:
    each image's detections are :func:`detect_with_mirror`'s."""
    from tqdm.auto import tqdm

    model.eval()
    targets: list[dict[str, Tensor]] = []
    predictions: list[dict[str, Tensor]] = []
    start = time.perf_counter()
    for images, batch_targets in tqdm(loader, desc="evaluating", disable=not progress, leave=False, unit="batch"):
        images = [image.to(device) for image in images]
        outputs = detect_with_mirror(model, images) if flip else model(images)
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
