"""Detections for image files, printed and drawn (torchvision's drawing utilities)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import draw_bounding_boxes

from ..data import load_rgb
from ..files import atomic_write
from .evaluate import TileLevel, detect_with_views

__all__ = ["detect_images", "draw_detections"]


def draw_detections(image: torch.Tensor, detection: dict[str, Any], classes: list[str]) -> torch.Tensor:
    """``image`` (uint8, C x H x W) with each box, its class name and score drawn."""
    boxes = detection["boxes"]
    if not len(boxes):
        return image
    captions = [f"{classes[label] if label < len(classes) else label} {score:.2f}"
                for label, score in zip(detection["labels"].tolist(), detection["scores"].tolist())]  # fmt: skip
    # one colour per class, the same in every picture
    palette = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#9a6324"]
    colors = [palette[label % len(palette)] for label in detection["labels"].tolist()]
    # captions in white on the box's colour, readable on any picture
    width = max(2, round(max(image.shape[-2:]) / 320))
    return draw_bounding_boxes(image, boxes, captions, colors=colors, width=width, label_colors="white",
                               fill_labels=True)  # fmt: skip


@torch.no_grad()
def detect_images(
    model: nn.Module,
    paths: list[str],
    classes: list[str],
    *,
    threshold: float = 0.3,
    out: str | Path | None = None,
    flip: bool = False,
    tiles: Sequence[TileLevel] = (),
    vote: bool = True,
) -> list[list[dict[str, Any]]]:
    """Per image, the boxes scoring at least ``threshold``: ``{"label", "score", "box"}``
    (x1 y1 x2 y2 pixels), best first.  With ``out``, each image is also written there as
    ``<name>.png`` with its boxes drawn.  ``flip`` (its mirror image) and ``tiles`` (those levels of tiles):
    found on those views together (``detection.evaluate.detect_with_views``; ``CORNER_TILES`` for small
    objects); ``vote``: their near-copies of a box averaged by score rather than the best one kept."""
    model.eval()
    results = []
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
    for path in paths:
        image = TF.pil_to_tensor(load_rgb(path))
        scaled = [TF.to_dtype(image, torch.float32, scale=True)]
        views = flip or tiles
        (detection,) = detect_with_views(model, scaled, flip=flip, tiles=tiles, vote=vote) if views else model(scaled)
        keep = detection["scores"] >= threshold
        detection = {k: v[keep] for k, v in detection.items()}
        results.append(
            [
                {
                    "label": classes[label] if label < len(classes) else str(label),
                    "score": round(score, 4),
                    "box": [round(v, 1) for v in box],
                }  # fmt: skip
                for label, score, box in zip(
                    detection["labels"].tolist(), detection["scores"].tolist(), detection["boxes"].tolist()
                )
            ]
        )
        if out is not None:
            drawn = draw_detections(image, detection, classes)
            target = Path(out) / f"{Path(path).stem}.png"
            picture = TF.to_pil_image(drawn)
            atomic_write(target, lambda tmp, picture=picture: picture.save(tmp, format="PNG"))
    return results
