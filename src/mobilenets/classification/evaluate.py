"""A classifier's validation metrics: top-1, top-5, loss and per-class top-1.

Its own module (not the training loop's) because bench, export, eval and decoupling score
models - PyTorch modules or an exported file's runner - without training them.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..predict import classifier_logits
from ..train.distributed import Distributed
from ..train.precision import autocast

__all__ = ["evaluate"]


def top_k_hits(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per image (float64): 1 where the label is among the ``k`` best classes, 0 where not, and where the
    k-th place is tied the share of the tied places the label would get if ties were broken at random.

    An int8 file's logits take 256 values, so an image's best classes can tie (23 of imagenet-sample's
    1,000 images for MobileNetV2's LiteRT int8 file); ``topk`` would break the tie by its own memory order,
    which moved that file's top-1 by up to half a point between ``topk(1)`` and ``topk(5)``."""
    own = logits.gather(1, labels[:, None])
    above = (logits > own).sum(1).double()
    level = (logits == own).sum(1).double()  # the label and the classes tied with it
    # a NaN logit equals nothing (level 0): a miss, not a division by zero
    return torch.where(level > 0, (k - above) / level.clamp(min=1), 0.0).clamp(0, 1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    num_classes: int,
    device: str = "cpu",
    *,
    dist: Distributed | None = None,
    channels_last: bool = False,
    precision: str = "fp32",
    flip: bool = False,
) -> dict[str, Any]:
    """Top-1, top-5, mean loss, per-class top-1 and images/s over ``loader``.

    Under torchrun each process passes its shard; the counts are summed.
    ``model`` may also be any callable from a batch to logits (an
    :class:`~mobilenets.export.OnnxClassifier`).  ``flip``: test-time
    augmentation - each image's logits averaged with its mirror image's, which
    costs a second forward pass and usually gains a few tenths of a point on
    data trained with random flips.
    """
    if isinstance(model, nn.Module):
        model.eval()
    device_type = torch.device(device).type
    counts = torch.zeros(4, dtype=torch.float64, device=device)  # top-1 hits, top-5 hits, samples, loss sum
    per_class = torch.zeros(2, num_classes, dtype=torch.float64, device=device)  # hits, samples
    start = time.perf_counter()
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device_type, precision):
            logits = classifier_logits(model, images, flip=flip)
        logits = logits.float()
        hit1 = top_k_hits(logits, labels, 1)
        counts += torch.stack(
            [
                hit1.sum(),
                top_k_hits(logits, labels, min(5, num_classes)).sum(),
                torch.tensor(labels.numel(), device=device, dtype=torch.float64),
                F.cross_entropy(logits, labels, reduction="sum").double(),
            ]
        )
        per_class[0] += torch.bincount(labels, weights=hit1, minlength=num_classes)
        per_class[1] += torch.bincount(labels, minlength=num_classes)
    if dist is not None:
        dist.all_sum(counts)
        dist.all_sum(per_class)
    elapsed = time.perf_counter() - start
    hits1, hits5, total, loss_sum = counts.tolist()
    if total == 0:
        raise ConfigError("the validation set is empty")
    return {
        "top1": hits1 / total,
        "top5": hits5 / total,
        "loss": loss_sum / total,
        # None for a class without images: an accuracy of nothing, not 0 %
        "per_class_top1": [h / n if n else None for h, n in zip(per_class[0].tolist(), per_class[1].tolist())],
        "per_class_images": [int(n) for n in per_class[1].tolist()],
        "images_per_s": total / elapsed,
        "samples": int(total),
    }
