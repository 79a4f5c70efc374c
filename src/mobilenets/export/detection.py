"""Detectors in ONNX: the network and its box decoding in the graph, NMS after it.

:class:`DecodedDetector` is what is exported: it takes images already resized to the
detector's square input (N, 3, R, R) in [0, 1], normalises them, runs the backbone and
heads and decodes every default box, returning

* ``boxes`` (N, A, 4): x1 y1 x2 y2 in input pixels, clipped to the image;
* ``scores`` (N, A, C): class probabilities (softmax; column 0 is the background).

Non-maximum suppression is left out of the graph on purpose: it is data-dependent,
ONNX Runtime's ``NonMaxSuppression`` is per class with fixed limits, and mobile
runtimes (XNNPACK, Core ML) ship their own.  :class:`ExportedDetector` applies the
detector's own post-processing to these outputs - score threshold, top candidates per
class, torchvision's ``batched_nms`` at the detector's IoU threshold, the
``detections_per_img`` best - all recorded in the file's metadata, so its detections
are the PyTorch model's (checked when exporting and in the tests).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import batched_nms

__all__ = ["DecodedDetector", "ExportedDetector", "OnnxDetector", "is_detector", "postprocess", "postprocess_settings"]


def is_detector(model: Any) -> bool:
    return hasattr(model, "anchor_generator") and hasattr(model, "box_coder") and hasattr(model, "head")


def detector_graph(model: nn.Module, info: dict[str, Any]) -> tuple[nn.Module, dict[str, Any], list[str]]:
    """What an export of a detector holds: the network and its box decoding (NMS runs after
    it, with the thresholds recorded in the metadata)."""
    extra = {"task": "detection", "postprocess": postprocess_settings(model)}
    return DecodedDetector(copy.deepcopy(model).eval(), int(info["resolution"])), extra, ["boxes", "scores"]


def detector_preprocessing(resolution: int) -> dict[str, Any]:
    """A detector file's preprocessing: the graph normalises its input itself, boxes come back in its pixels."""
    steps = f"RGB, to float in [0, 1], resize to {resolution}x{resolution} (bilinear); boxes scale back"
    return {"transforms": "detection", "resolution": resolution, "steps": steps}


def postprocess_settings(model: nn.Module) -> dict[str, float]:
    """The thresholds the detector's own post-processing uses."""
    return {
        "score_thresh": float(model.score_thresh),
        "nms_thresh": float(model.nms_thresh),
        "detections_per_img": int(model.detections_per_img),
        "topk_candidates": int(model.topk_candidates),
    }


class DecodedDetector(nn.Module):
    """An SSD's network plus box decoding at a fixed input size (see the module docstring)."""

    def __init__(self, model: nn.Module, resolution: int) -> None:
        super().__init__()
        self.backbone, self.head = model.backbone, model.head
        self.resolution = resolution
        self.in_channels = 3
        transform = model.transform
        self.register_buffer("mean", torch.tensor(transform.image_mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(transform.image_std).view(1, -1, 1, 1))
        with torch.no_grad():
            blank = torch.zeros(1, 3, resolution, resolution)
            maps = list(model.backbone.eval()(blank).values())
            anchors = model.anchor_generator(ImageList(blank, [(resolution, resolution)]), maps)[0]
        # (x1, y1, x2, y2) anchors as centre and size, and torchvision's box-coder weights
        self.register_buffer("anchor_centres", (anchors[:, :2] + anchors[:, 2:]) / 2)
        self.register_buffer("anchor_sizes", anchors[:, 2:] - anchors[:, :2])
        wx, wy, ww, wh = model.box_coder.weights
        self.register_buffer("weights", torch.tensor([wx, wy, ww, wh]))
        self.clip = model.box_coder.bbox_xform_clip

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = (images - self.mean) / self.std
        out = self.head(list(self.backbone(x).values()))
        codes = out["bbox_regression"] / self.weights
        centres = self.anchor_centres + codes[..., :2] * self.anchor_sizes
        sizes = self.anchor_sizes * torch.exp(codes[..., 2:].clamp(max=self.clip))
        boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=-1).clamp(0, self.resolution)
        return boxes, F.softmax(out["cls_logits"], dim=-1)


def postprocess(boxes: Tensor, scores: Tensor, settings: dict[str, float]) -> dict[str, Tensor]:
    """One image's detections from decoded ``boxes`` (A, 4) and ``scores`` (A, C), as the
    detector does it: per class, boxes above the score threshold, the top candidates, then
    NMS over all classes at once (boxes of different classes never suppress each other)."""
    kept_boxes, kept_scores, kept_labels = [], [], []
    for label in range(1, scores.shape[-1]):
        score = scores[:, label]
        keep = score > settings["score_thresh"]
        score, box = score[keep], boxes[keep]
        score, order = score.topk(min(int(settings["topk_candidates"]), score.numel()))
        kept_boxes.append(box[order])
        kept_scores.append(score)
        kept_labels.append(torch.full_like(order, label))
    box, score, label = torch.cat(kept_boxes), torch.cat(kept_scores), torch.cat(kept_labels)
    keep = batched_nms(box, score, label, settings["nms_thresh"])[: int(settings["detections_per_img"])]
    return {"boxes": box[keep], "scores": score[keep], "labels": label[keep]}


class ExportedDetector:
    """An exported detector's network (boxes and scores from any runtime), called like the
    PyTorch detector on a list of images (3, H, W) in [0, 1]: each is resized to the network's
    input, and the detector's own post-processing (its thresholds and NMS, recorded in the
    file) runs after the graph; boxes come back in each image's pixels."""

    def __init__(self, network: Any) -> None:
        self.network, self.path, self.info = network, network.path, network.info
        if "postprocess" not in self.info:  # what every detector export records (detector_graph)
            raise ValueError(f"{self.path} is not a detector export: it records no post-processing settings")
        self.resolution = int(self.info["resolution"])
        self.settings = self.info["postprocess"]

    def eval(self) -> ExportedDetector:
        return self

    def decoded(self, resized: Tensor) -> tuple[Tensor, Tensor]:
        """The exported network's (boxes, scores) for one resized image."""
        boxes, scores = self.network(resized)
        return boxes, scores

    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        results = []
        for image in images:
            height, width = image.shape[-2:]
            side = self.resolution
            resized = F.interpolate(image[None].float(), size=(side, side), mode="bilinear", align_corners=False)
            boxes, scores = self.decoded(resized)
            found = postprocess(boxes[0], scores[0], self.settings)
            found["boxes"] = found["boxes"] * torch.tensor([width / side, height / side] * 2)
            results.append(found)
        return results


class OnnxDetector(ExportedDetector):
    """A detector exported by ``mobilenets export``, run by ONNX Runtime."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        from .ort import OnnxClassifier

        super().__init__(OnnxClassifier(path, threads=threads))
