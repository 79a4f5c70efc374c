"""Masks for image files: the class of every pixel, drawn over the image with a legend
(torchvision's ``draw_segmentation_masks``) and written as a class-index PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import draw_segmentation_masks

from ..data import IMAGENET_MEAN, IMAGENET_STD, load_rgb
from ..files import atomic_write
from .evaluate import predict_logits

__all__ = ["class_colours", "draw_segmentation", "segment_images"]


def class_colours(count: int) -> list[tuple[int, int, int]]:
    """A fixed, well-separated colour per class index (the same in every picture):
    golden-ratio hues at alternating brightness."""
    import colorsys

    colours = []
    for index in range(count):
        hue = (index * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95 if index % 2 else 0.7)
        colours.append((round(255 * r), round(255 * g), round(255 * b)))
    return colours


def draw_segmentation(
    image: torch.Tensor, labels: torch.Tensor, classes: list[str], *, alpha: float = 0.55
) -> Image.Image:
    """``image`` (uint8, 3 x H x W) with each class's pixels tinted in its colour and,
    below it, a legend of the classes present (largest first) with their share of the picture."""
    present, counts = labels.unique(return_counts=True)
    order = counts.argsort(descending=True)
    present, counts = present[order].tolist(), counts[order].tolist()
    colours = class_colours(len(classes))
    masks = torch.stack([labels == c for c in present])
    drawn = draw_segmentation_masks(image, masks, alpha=alpha, colors=[colours[c] for c in present])
    picture = TF.to_pil_image(drawn)
    # the legend: one row of swatches and names, wrapped to the picture's width
    size = max(12, round(picture.width / 45))
    font = ImageFont.load_default(size=size)
    shares = [100 * n / labels.numel() for n in counts]
    entries = [f"{classes[c] if c < len(classes) else c} {f'{s:.0f}%' if s >= 0.5 else '<1%'}"
               for c, s in zip(present, shares)]  # fmt: skip
    pad, swatch = size // 2, size
    rows, x = [[]], pad
    for entry, colour in zip(entries, (colours[c] for c in present)):
        width = swatch + pad // 2 + round(font.getlength(entry)) + 2 * pad
        if x + width > picture.width and rows[-1]:
            rows.append([])
            x = pad
        rows[-1].append((x, entry, colour))
        x += width
    line = size + pad
    canvas = Image.new("RGB", (picture.width, picture.height + len(rows) * line + pad), "white")
    canvas.paste(picture, (0, 0))
    pen = ImageDraw.Draw(canvas)
    for number, row in enumerate(rows):
        y = picture.height + pad + number * line
        for x, entry, colour in row:
            pen.rectangle([x, y, x + swatch, y + swatch], fill=colour, outline="black")
            pen.text((x + swatch + pad // 2, y + swatch / 2), entry, fill="black", font=font, anchor="lm")
    return canvas


def _write_png(path: Path, picture: Image.Image) -> None:
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


@torch.no_grad()
def segment_images(
    model: nn.Module,
    paths: list[str],
    info: dict[str, Any],
    *,
    out: str | Path | None = None,
    top: int = 5,
    flip: bool = False,
) -> list[list[dict[str, Any]]]:
    """Per image, the ``top`` classes by share of its pixels: ``{"label", "fraction"}``; ``flip``: the class
    scores averaged with the mirror image's (``segmentation.evaluate.predict_logits``).

    With ``out``, each image is written there as ``<name>.png`` with its mask drawn and
    a legend, and ``<name>_mask.png``, the class of every pixel in the dataset's own
    ids (``info["class_ids"]``; 16-bit where an id passes 255) - the format the
    training masks had.  ``model`` is a PyTorch segmenter or an exported one.
    """
    classes = list(info["classes"])
    class_ids = info.get("class_ids") or list(range(len(classes)))
    to_id = np.asarray(class_ids, dtype=np.int64)
    resolution = int(info["resolution"])
    if isinstance(model, nn.Module):
        model.eval()
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
    results = []
    for path in paths:
        image = TF.pil_to_tensor(load_rgb(path))
        normalised = (TF.to_dtype(image, torch.float32, scale=True) - mean) / std
        labels = predict_logits(model, normalised, resolution, flip=flip).argmax(0)
        present, counts = labels.unique(return_counts=True)
        order = counts.argsort(descending=True)[:top]
        results.append([
            {"label": classes[c] if c < len(classes) else str(c), "fraction": round(n / labels.numel(), 4)}
            for c, n in zip(present[order].tolist(), counts[order].tolist())
        ])  # fmt: skip
        if out is not None:
            stem = Path(path).stem
            _write_png(Path(out) / f"{stem}.png", draw_segmentation(image, labels, classes))
            ids = to_id[labels.numpy()]
            raw = Image.fromarray(ids.astype(np.uint8)) if ids.max() < 256 else Image.fromarray(ids.astype(np.uint16))
            _write_png(Path(out) / f"{stem}_mask.png", raw)
    return results
