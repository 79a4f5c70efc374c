"""Segmentation metrics from one confusion matrix accumulated over the whole split.

``miou`` is the mean over classes of IoU = TP / (TP + FP + FN), each class's counts
summed over every pixel of every image first (as Pascal VOC and torchvision's
references score, not an average of per-image IoUs, which would weigh a small image's
stray pixels as much as a large image's).  A class that neither occurs nor is
predicted in the split has no IoU (``None`` in ``per_class_iou``) and is left out of
the mean.  ``pixel_acc`` is the share of scored pixels labelled right.  Pixels whose
label is :data:`~mobilenets.segmentation.data.IGNORE` are not scored.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .data import IGNORE

__all__ = ["confusion_matrix", "evaluate_segmenter", "predict_logits", "segmentation_metrics"]


def confusion_matrix(labels: Tensor, predictions: Tensor, num_classes: int) -> Tensor:
    """``num_classes`` x ``num_classes`` counts (int64): row = label, column = prediction;
    pixels labelled :data:`IGNORE` are left out."""
    labels, predictions = labels.reshape(-1), predictions.reshape(-1)
    scored = labels != IGNORE
    if scored.any() and int(labels[scored].max()) >= num_classes:
        raise ConfigError(f"a label {int(labels[scored].max())} is outside the model's {num_classes} classes")
    index = labels[scored].long() * num_classes + predictions[scored].long()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_metrics(matrix: Tensor, classes: list[str] | None = None) -> dict[str, Any]:
    """``miou``, ``pixel_acc``, ``per_class_iou`` (None where a class is absent and
    never predicted) and ``pixels`` from a confusion matrix."""
    matrix = matrix.double()
    true_positive = matrix.diag()
    union = matrix.sum(0) + matrix.sum(1) - true_positive
    present = union > 0
    iou = torch.where(present, true_positive / union.clamp(min=1), torch.zeros_like(union))
    total = matrix.sum()
    metrics: dict[str, Any] = {
        "miou": float(iou[present].mean()) if present.any() else 0.0,
        "pixel_acc": float(true_positive.sum() / total) if total > 0 else 0.0,
        "per_class_iou": [float(v) if p else None for v, p in zip(iou.tolist(), present.tolist())],
        "classes_scored": int(present.sum()),
        "pixels": int(total),
    }
    if classes is not None:
        metrics["classes"] = list(classes)
    return metrics


def _scores(model: nn.Module, batch: Tensor) -> Tensor:
    out = model(batch)
    return out["out"] if isinstance(out, dict) else out


@torch.no_grad()
def predict_logits(
    model: nn.Module, image: Tensor, resolution: int, size: tuple[int, int] | None = None, *, flip: bool = False
) -> Tensor:
    """Class scores (C x H x W) for one normalised image (3 x H x W) at ``size`` (default
    its own): the network runs on the image resized to ``resolution`` x ``resolution`` -
    the fixed square input an exported model takes, so PyTorch, ONNX and a phone score
    alike - and its output is resized back bilinearly.  ``model`` returns a tensor or
    torchvision's ``{"out": ...}``.  ``flip``: averaged with the scores of the mirror image,
    mirrored back (test-time flip, twice the cost)."""
    size = size or tuple(image.shape[-2:])
    batch = F.interpolate(image[None], size=(resolution, resolution), mode="bilinear", align_corners=False,
                          antialias=True)  # fmt: skip
    out = _scores(model, batch)
    if flip:
        out = (out + _scores(model, batch.flip(-1)).flip(-1)) / 2
    return F.interpolate(out, size=size, mode="bilinear", align_corners=False)[0]


@torch.no_grad()
def evaluate_segmenter(
    model: nn.Module,
    loader,
    num_classes: int,
    resolution: int,
    device: str = "cpu",
    *,
    dist=None,
    classes: list[str] | None = None,
    progress: bool = False,
    flip: bool = False,
) -> dict[str, Any]:
    """Score ``model`` over ``loader`` (images and masks, one at a time or stacked): each
    image runs at ``resolution`` x ``resolution`` (with ``flip``, its mirror image too: see
    :func:`predict_logits`) and is scored at its mask's own size.  Under torchrun each process
    scores its shard and the confusion matrices are summed."""
    from tqdm.auto import tqdm

    model.eval()
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    images_seen, start = 0, time.perf_counter()
    for images, masks in tqdm(loader, desc="evaluating", disable=not progress, leave=False, unit="batch"):
        for image, mask in zip(images, masks):
            mask = mask.as_subclass(Tensor).to(device)
            image = image.as_subclass(Tensor).to(device)
            logits = predict_logits(model, image, resolution, tuple(mask.shape), flip=flip)
            matrix += confusion_matrix(mask, logits.argmax(0), num_classes)
            images_seen += 1
    elapsed = time.perf_counter() - start
    if dist is not None and dist.enabled:
        dist.all_sum(matrix)
        images_seen = int(dist.all_sum(torch.tensor(images_seen, device=device)).item())
    metrics = segmentation_metrics(matrix.cpu(), classes)
    metrics["images"] = images_seen
    metrics["images_per_s"] = images_seen / elapsed if elapsed > 0 else 0.0
    return metrics
