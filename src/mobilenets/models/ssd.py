"""SSD and SSDLite object detectors on MobileNet backbones.

SSD (Liu et al. 2016) predicts, at every position of several feature maps, a class
score vector and a box offset for each of a few *default boxes* (anchors) of fixed
scales and shapes.  The maps are two of the backbone's (output stride 16 and 32)
followed by *extra layers* that halve the map four times (10x10 -> 1x1 at 300x300
input), so big objects are found on coarse maps and small ones on fine maps.

* ``ssd_mobilenet_v1`` - SSD300 on MobileNetV1 (V1 paper, Table 13: 19.3 COCO mAP,
  1.2B mult-adds, 6.8M parameters): regular 3x3 extra layers, 1x1 prediction convs
  as in the TensorFlow Object Detection API's ``ssd_mobilenet_v1_coco``.
* ``ssdlite_mobilenet_v1`` / ``ssdlite_mobilenet_v2`` - SSDLite (V2 paper, section 6.2,
  Table 6: 22.2 / 22.1 mAP, 1.3B / 0.8B mult-adds, 5.1M / 4.3M parameters): every
  extra-layer and prediction conv depthwise separable, 320x320 input; V2's first map
  is the *expansion* of its first stride-32 block (576 channels at stride 16).
* ``ssdlite320_mobilenet_v3_large`` - torchvision's network layer for layer (3,440,060
  parameters, 21.3 mAP in its model card; V3 paper: 22.0): the V3 backbone with its
  tail halved, C4's expansion as first map; torchvision's state dict loads into it.

The three paper models use the TF API's anchors: 3 boxes in the lowest layer (a square
of scale 0.1, and scale 0.2 at ratios 2 and 1/2), 6 elsewhere (scales 0.35 .. 0.95,
ratios 1, 2, 1/2, 3, 1/3 and one between scales).  torchvision's SSDLite uses 6
everywhere (scales 0.2 .. 0.95).  ``num_classes``
counts the background, as torchvision and the papers' 90-category COCO do (91).

Training, box matching, losses, decoding and NMS are torchvision's
:class:`~torchvision.models.detection.SSD`; what is written here as data is the part
specific to MobileNets: the backbone taps, the extra layers and the heads.  The
detector takes a list of images (C, H, W) in [0, 1], resizes each to the model's
resolution, and returns per image a dict of ``boxes`` (x1, y1, x2, y2 in input pixels),
``scores`` and ``labels`` (in training mode, with targets, the losses).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD, SSDScoringHead

from ..errors import InputShapeError
from ..layers import ConvBNAct
from .features import FeatureExtractor
from .registry import create_model, register_model

__all__ = ["SSDSpec", "SSD_SPECS", "SSDAnchors", "SSDFeatures", "build_ssd", "detector_backbone"]

# Every extra layer and prediction block in SSDLite, and the TF API's SSD configs:
# batch norm with decay 0.97 (momentum 0.03) and epsilon 1e-3, ReLU6.
HEAD_BN = {"bn_eps": 1e-3, "bn_momentum": 0.03}
ACTIVATION = "relu6"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SSDSpec:
    """One published detector, as data."""

    backbone: str  # a zoo classifier
    taps: tuple[str, ...]  # its feature maps used (see mobilenets.models.features)
    resolution: int
    lite: bool  # SSDLite: depthwise separable extra layers and predictions
    extra_channels: tuple[int, ...] = (512, 256, 256, 128)
    prediction_kernel: int = 3  # SSD (TF API): 1x1 predictions; SSDLite: 3x3 depthwise + 1x1
    lowest_layer_boxes: int = 3  # TF API's reduce_boxes_in_lowest_layer; torchvision: 6
    image_mean: tuple[float, ...] = IMAGENET_MEAN  # the backbones start from torchvision's ImageNet weights
    image_std: tuple[float, ...] = IMAGENET_STD
    backbone_options: Mapping[str, Any] = field(default_factory=dict)
    # Post-processing (torchvision's SSDLite values for the V3 twin; SSD's defaults otherwise).
    score_thresh: float = 0.01
    nms_thresh: float = 0.45
    detections_per_img: int = 200
    topk_candidates: int = 400


SSD_SPECS: dict[str, SSDSpec] = {
    # MobileNetV1's conv 11 (512 channels, stride 16) and conv 13 (1024, stride 32), as in the TF API.
    "ssd_mobilenet_v1": SSDSpec("mobilenet_v1", ("11", "13"), 300, lite=False, prediction_kernel=1),
    "ssdlite_mobilenet_v1": SSDSpec("mobilenet_v1", ("11", "13"), 320, lite=True),
    "ssdlite_mobilenet_v2": SSDSpec("mobilenet_v2", ("14.expansion", "18"), 320, lite=True),
    "ssdlite320_mobilenet_v3_large": SSDSpec(
        "mobilenet_v3_large",
        ("13.expansion", "16"),
        320,
        lite=True,
        lowest_layer_boxes=6,
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
        backbone_options={"reduced_tail": True},
        score_thresh=0.001,
        nms_thresh=0.55,
        detections_per_img=300,
        topk_candidates=300,
    ),
}


class SSDAnchors(DefaultBoxGenerator):
    """torchvision's default boxes (scales 0.2 .. 0.95, ratios 1, 2, 1/2, 3, 1/3 and one
    between scales) with, when ``lowest_layer_boxes`` is 3, the TF API's lowest layer
    (``create_ssd_anchors`` with ``reduce_boxes_in_lowest_layer``): a square of scale 0.1
    and the layer's own scale, 0.2, at ratios 2 and 1/2."""

    def __init__(self, levels: int, *, lowest_layer_boxes: int = 6) -> None:
        if lowest_layer_boxes not in (3, 6):
            raise ValueError(f"lowest_layer_boxes must be 3 or 6, got {lowest_layer_boxes}")
        self.lowest_layer_boxes = lowest_layer_boxes
        super().__init__([[2, 3]] * levels, min_ratio=0.2, max_ratio=0.95)

    def _generate_wh_pairs(self, num_outputs, dtype=torch.float32, device=torch.device("cpu")) -> list[Tensor]:
        pairs = super()._generate_wh_pairs(num_outputs, dtype, device)
        if self.lowest_layer_boxes == 3:
            r, scale = math.sqrt(2.0), self.scales[0]
            boxes = [[0.1, 0.1], [scale * r, scale / r], [scale / r, scale * r]]
            pairs[0] = torch.tensor(boxes, dtype=dtype, device=device)
        return pairs

    def num_anchors_per_location(self) -> list[int]:
        return [len(pairs) for pairs in self._wh_pairs]


def _extra_layer(in_channels: int, out_channels: int, lite: bool) -> nn.Sequential:
    """1x1 to half the width, then a stride-2 3x3 (depthwise + 1x1 in SSDLite) to the full width."""
    mid = out_channels // 2
    if lite:
        return nn.Sequential(
            ConvBNAct(in_channels, mid, 1, activation=ACTIVATION, **HEAD_BN),
            ConvBNAct(mid, mid, 3, 2, groups=mid, activation=ACTIVATION, **HEAD_BN),
            ConvBNAct(mid, out_channels, 1, activation=ACTIVATION, **HEAD_BN),
        )
    return nn.Sequential(
        ConvBNAct(in_channels, mid, 1, activation=ACTIVATION, **HEAD_BN),
        ConvBNAct(mid, out_channels, 3, 2, activation=ACTIVATION, **HEAD_BN),
    )


def _prediction(in_channels: int, outputs: int, lite: bool, kernel: int) -> nn.Sequential:
    """One map's class scores or box offsets: (depthwise 3x3 + BN + ReLU6 in SSDLite), then a conv."""
    layers: list[nn.Module] = []
    if lite:
        layers.append(ConvBNAct(in_channels, in_channels, 3, groups=in_channels, activation=ACTIVATION, **HEAD_BN))
        kernel = 1
    layers.append(nn.Conv2d(in_channels, outputs, kernel, padding=(kernel - 1) // 2))
    return nn.Sequential(*layers)


class SSDFeatures(nn.Module):
    """The backbone's maps at its taps, then each extra layer's output."""

    def __init__(self, body: FeatureExtractor, extra: nn.ModuleList) -> None:
        super().__init__()
        self.body = body
        self.extra = extra

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        maps = self.body(x)
        x = maps[-1]
        for layer in self.extra:
            x = layer(x)
            maps.append(x)
        return OrderedDict((str(i), m) for i, m in enumerate(maps))


class SSDHead(nn.Module):
    """Per-map class and box predictions; torchvision's scoring heads flatten them."""

    def __init__(self, channels: list[int], anchors: list[int], num_classes: int, lite: bool, kernel: int) -> None:
        super().__init__()
        scores = nn.ModuleList(_prediction(c, num_classes * a, lite, kernel) for c, a in zip(channels, anchors))
        boxes = nn.ModuleList(_prediction(c, 4 * a, lite, kernel) for c, a in zip(channels, anchors))
        self.classification_head = SSDScoringHead(scores, num_classes)
        self.regression_head = SSDScoringHead(boxes, 4)

    def forward(self, x: list[Tensor]) -> dict[str, Tensor]:
        return {"bbox_regression": self.regression_head(x), "cls_logits": self.classification_head(x)}


def _small_normal_init(module: nn.Module) -> None:
    # New layers start small (std 0.03, as the TF API and torchvision's SSDLite) so the
    # first losses are those of near-uniform scores.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.03)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def detector_backbone(spec: SSDSpec, width_mult: float) -> FeatureExtractor:
    """The spec's classifier body cut at its taps (the registry builds it, so any weights
    a classifier takes - ours, torchvision's - load into it)."""
    body = create_model(spec.backbone, width_mult=width_mult, features_only=True, out_indices=list(spec.taps),
                        **dict(spec.backbone_options))  # fmt: skip
    for m in body.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = HEAD_BN["bn_momentum"]
    return body


class ScaleCompensatingMatcher(det_utils.SSDMatcher):
    """S3FD's box matching (Zhang et al. 2017, section 3.2): SSD's (a box learns an object it
    overlaps by ``threshold``, each object its best box), then an object left with fewer than
    ``min_boxes`` takes its ``min_boxes`` best boxes among those overlapping it by ``floor`` or more.

    Default boxes come in a few sizes and objects in every size: an object far from every box
    size (a person smaller than the smallest box) overlaps none by 0.35 and learns from one box,
    where a large one learns from dozens. At 512x512 with SSDLite's boxes, 105 of coco128's 261
    training people match no box at 0.35.
    """

    def __init__(self, threshold: float, min_boxes: int, floor: float = 0.1) -> None:
        super().__init__(threshold)
        self.min_boxes, self.floor = min_boxes, floor

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        matches = super().__call__(match_quality_matrix)
        overlap, nearest = match_quality_matrix.max(dim=0)  # per box: its most overlapped object
        counts = torch.bincount(matches[matches >= 0], minlength=match_quality_matrix.shape[0])
        for obj in torch.nonzero(counts < self.min_boxes).flatten().tolist():
            # only boxes this object overlaps most, and none another object was given
            free = (nearest == obj) & (overlap >= self.floor) & ((matches < 0) | (matches == obj))
            candidates = torch.nonzero(free).flatten()
            best = candidates[overlap[candidates].argsort(descending=True)[: self.min_boxes]]
            matches[best] = obj
        return matches


class Detector(SSD):
    """torchvision's SSD, answering input it cannot take with an :class:`InputShapeError` that
    says what to pass (a 3-D tensor or a numpy image failed deep inside its transform)."""

    # Training: SSD mines 3 background boxes per object *in the same image*, so an image without
    # objects teaches nothing; with this on it teaches its hardest boxes as background, as many as the
    # batch's images with objects mine on average (set by the trainer's --background-every)
    mine_empty_images = False
    # how many: this many per positive of an average image with objects (SSD's own 3 negatives per positive)
    empty_image_ratio = 3

    def match_boxes_at(self, iou: float, min_boxes: int = 0) -> None:
        """Training: a default box learns an object it overlaps by ``iou`` or more (and each object
        its best box, whatever the overlap); SSD and torchvision use 0.5, S3FD 0.35 for small faces.
        ``min_boxes`` > 0 adds S3FD's second step (:class:`ScaleCompensatingMatcher`)."""
        if min_boxes:
            self.proposal_matcher = ScaleCompensatingMatcher(iou, min_boxes)
        else:
            self.proposal_matcher = det_utils.SSDMatcher(iou)

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        if not self.mine_empty_images:
            return losses
        positives = torch.stack([(matched >= 0).sum() for matched in matched_idxs])
        empty = positives == 0
        if not empty.any() or empty.all():  # nothing to mine, or no count to take
            return losses
        count = round(self.empty_image_ratio * float(positives[~empty].float().mean()))
        logits = head_outputs["cls_logits"][empty]
        background = nn.functional.cross_entropy(
            logits.flatten(0, 1), logits.new_zeros(logits.shape[:2].numel(), dtype=torch.long), reduction="none"
        ).view(logits.shape[:2])
        hardest = background.topk(min(count, background.shape[1]), dim=1).values
        # divided by the batch's positives, as torchvision's SSD divides the rest of the loss
        losses["classification"] = losses["classification"] + hardest.sum() / positives.sum()
        return losses

    def forward(self, images, targets=None):
        if isinstance(images, Tensor) and images.dim() == 4:
            images = list(images)
        if not isinstance(images, (list, tuple)):
            what = f"a {images.dim()}-D tensor" if isinstance(images, Tensor) else type(images).__name__
            hint = " (one image: pass [image])" if isinstance(images, Tensor) and images.dim() == 3 else ""
            raise InputShapeError(
                f"a detector takes a list of (3, H, W) float images or a (N, 3, H, W) batch, got {what}{hint}"
            )
        for number, image in enumerate(images):
            if not isinstance(image, Tensor):
                raise InputShapeError(f"image {number} is a {type(image).__name__}, not a torch.Tensor; convert "
                                      "with torch.from_numpy(array).permute(2, 0, 1).float() / 255")  # fmt: skip
            if image.dim() != 3 or image.shape[0] != self.in_channels:
                raise InputShapeError(
                    f"image {number} has shape {tuple(image.shape)}; a detector takes ({self.in_channels}, H, W)"
                )
            if not image.is_floating_point():
                raise InputShapeError(f"image {number} is {image.dtype}; convert with image.float() / 255 "
                                      "(the detector normalises it itself)")  # fmt: skip
        return super().forward(images, targets)


def build_ssd(spec: SSDSpec, *, num_classes: int, width_mult: float, resolution: int) -> nn.Module:
    """The detector ``spec`` describes (see the module docstring)."""
    body = detector_backbone(spec, width_mult)
    channels = body.out_channels
    extra = nn.ModuleList()
    for depth in spec.extra_channels:
        depth = max(16, int(depth * width_mult))  # the TF API's min_depth
        extra.append(_extra_layer(channels[-1], depth, spec.lite))
        channels.append(depth)
    _small_normal_init(extra)
    anchors = SSDAnchors(len(channels), lowest_layer_boxes=spec.lowest_layer_boxes)
    head = SSDHead(channels, anchors.num_anchors_per_location(), num_classes, spec.lite, spec.prediction_kernel)
    _small_normal_init(head)
    model = Detector(
        SSDFeatures(body, extra),
        anchors,
        (resolution, resolution),
        num_classes,
        image_mean=list(spec.image_mean),
        image_std=list(spec.image_std),
        head=head,
        score_thresh=spec.score_thresh,
        nms_thresh=spec.nms_thresh,
        detections_per_img=spec.detections_per_img,
        topk_candidates=spec.topk_candidates,
    )
    model.in_channels, model.default_resolution = 3, resolution
    return model


def _register(name: str, summary: str, twin=None) -> None:
    spec = SSD_SPECS[name]

    def builder(*, num_classes: int = 91, width_mult: float = 1.0, resolution: int = spec.resolution) -> nn.Module:
        return build_ssd(spec, num_classes=num_classes, width_mult=width_mult, resolution=resolution)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"{summary}.\n\n``num_classes`` counts the background (91 for COCO's 90 ids)."
    register_model(name, summary=summary, default_resolution=spec.resolution, torchvision_twin=twin,
                   task="detection")(builder)  # fmt: skip


def _ssdlite_v3_twin(arch: Mapping[str, Any]) -> nn.Module:
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    if arch.get("width_mult", 1.0) != 1.0 or arch.get("resolution", 320) != 320:
        return nn.Identity()  # torchvision builds width 1.0 at 320 only: no key mapping
    # No backbone weights: torchvision then halves the tail, as its COCO weights have it.
    return ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=arch["num_classes"])


_register("ssd_mobilenet_v1", "SSD300 on MobileNetV1 (V1 paper, Table 13: 19.3 COCO mAP)")
_register("ssdlite_mobilenet_v1", "SSDLite320 on MobileNetV1 (V2 paper, Table 6: 22.2 COCO mAP)")
_register("ssdlite_mobilenet_v2", "SSDLite320 on MobileNetV2 (V2 paper, Table 6: 22.1 COCO mAP)")
_register(
    "ssdlite320_mobilenet_v3_large",
    "torchvision's SSDLite320 on MobileNetV3-Large, reduced tail (21.3 COCO mAP)",
    _ssdlite_v3_twin,
)
