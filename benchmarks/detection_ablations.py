"""Detector training ablations that the library has no option for, measured on coco128's people
(docs/benchmarks.md, "One class"): each flag changes one thing, then ``mobilenets train`` runs with the
rest of the command line as given. (Training on the images that hold an object only, and S3FD's box
matching, measured with this script's patches before the library had them, are ``mobilenets train
--skip-empty-images`` and ``--match-iou T``.)

    python benchmarks/detection_ablations.py [--anchor-scales S0,...,S6] [--sgd-lr LR] [--stride-8] [--tall-small-box] \
        [--box-loss TYPE[:WEIGHT]] [--neg-ratio R] [--focal ALPHA:GAMMA] [--crop-chance P] \
        [--photometric P] [--multi-scale S1,S2,...] [--other-objects] [--atss K] [--balance-objects POWER] \
        [--ignore-from IOU] [--box-segmentation WEIGHT] [--background-unmined] [--background-ratio R] \
        -- train --model ssdlite_mobilenet_v2 ...

* ``--anchor-scales``: default boxes of these 7 scales (fractions of the image side; 6 boxes per position,
  ratios 1, 2, 1/2, 3, 1/3 and one between scales) instead of the TF API's (3 boxes lowest: a 0.1 square, 0.2 at
  ratios 2 and 1/2; then 0.35 ... 0.95); coco128's people are small (a third of the validation ones under 0.1 of
  the image side).
* ``--sgd-lr``: the coco-ssdlite recipe with SGD (momentum 0.9) at this rate instead of AdamW.
* ``--copy-paste P MASKS``: simple copy-paste (Ghiasi et al. 2021) with each training image's chance P: the
  objects of another training image (its kept boxes, cut out by its class-index mask in the folder MASKS,
  coco128's ``semantic_segmentation/masks/train2017``; ``--mask-ids`` gives each kept class's value in the
  masks, 1 for coco128's people) pasted at the same place relative to the image, their boxes added.
* ``--mosaic P``: with chance P a training image becomes a mosaic (YOLOv4/v5): it and three other training
  images, each at its own scale, meet at a random point of a canvas twice the side of the largest, and the
  window of one image's side around the canvas centre is kept (objects keep their size; boxes cut to less
  than a fifth of their area are dropped), before the usual crop, flip and resize.
* ``--box-loss TYPE[:WEIGHT]``: the box loss of torchvision's detection helpers (``giou``, ``diou``, ``ciou``,
  ``l1``) times WEIGHT instead of SSD's smooth L1 on the encoded offsets: the IoU losses score the decoded box
  itself, where most of the validation false positives overlap a person by 0.1-0.5 (docs/benchmarks.md).
* ``--neg-ratio R``: SSD's hard negative mining keeps R background boxes per positive in each image (3 in SSD
  and torchvision) - more of them for fewer confident false positives.
* ``--focal ALPHA:GAMMA``: the classification loss of RetinaNet (Lin et al. 2017) in its softmax form instead of
  SSD's hard negative mining: every default box of every image counts, each weighted by (1 - p)^GAMMA for its
  true class's probability p and by ALPHA (objects) or 1 - ALPHA (background), summed over the batch and divided
  by its matched boxes; the background scores start at the paper's prior (an object probability of 0.01). The
  scores stay a softmax, so evaluation and export are unchanged.
* ``--crop-chance P``: the IoU crop on a training image with chance P only (always in SSD and torchvision's
  references; its crops keep 0.3-1 of each side, so the people trained on are larger than the full images'
  people scored at evaluation); the other images are seen whole.
* ``--photometric P``: SSD's photometric distortion (torchvision's ``RandomPhotometricDistort``: brightness,
  contrast, saturation, hue and channel order, each with chance P) before the crop, without SSD's zoom-out
  (the ``coco-ssd`` recipe has both; the zoom-out shrinks the people further).
* ``--multi-scale S1,S2,...``: each training batch resized to one of these square sides, drawn from the run's
  seeded generator (YOLO's multi-scale training; the default boxes follow the maps), evaluation at the model's
  own side.
* ``--other-objects``: with ``--classes``, the training images that hold a kept object keep every other object
  too, as one more class ("other object"): more boxes to learn box offsets from, and the rest of the scene
  labelled rather than mined as background. Training images without a kept object and the validation split
  are as ``--classes`` leaves them, so the scores are the kept classes' (COCO's mean skips a class without
  ground truth).
* ``--tall-small-box``: a fourth default box in the TF API's lowest layer, the 0.1 square's tall twin (0.1 at
  ratio 1/2: 0.071 x 0.141 of the sides), for the medium people between the 0.1 square and the 0.2 boxes: at
  512x512 coco128's medium training people have a median of 6 default boxes at IoU 0.35 or more (15 of 82 none;
  the large ones 83), 11 with it (3 none) - ``default_box_counts.py``.
* ``--atss K``: ATSS's assignment (Zhang et al. 2020) in place of the 0.35 matching: an object's candidates are
  the default boxes at the K positions of each map nearest its centre; those overlapping it by the candidates'
  mean IoU plus their standard deviation, and centred inside it, learn it. At 512x512 and K = 9 coco128's training
  people get a median of 2 / 18 / 33 boxes (small / medium / large) against 0 / 6 / 83 at 0.35
  (``default_box_counts.py --atss 9``).
* ``--balance-objects POWER``: each positive default box of an object with n of them weighs n ** -POWER (scaled
  so the weights add up to the positives): at 1 every object counts the same, where SSD lets a large person's
  ~80 boxes outweigh a medium one's ~6.
* ``--ignore-from IOU``: default boxes overlapping an object by IOU or more but under the matching threshold are
  left out of the hard negative mining (RetinaNet's ignored band): a box half on a person is not taught as
  background.
* ``--box-segmentation WEIGHT``: DES's weak segmentation branch (Zhang et al., CVPR 2018, "Single-shot object
  detection with enriched semantics"): a 1x1 convolution on the finest map predicts each position's class, the
  target being the class of the smallest box holding it (no masks needed), its cross entropy times WEIGHT added
  to the loss. Training only: evaluation and export see the detector's usual outputs (give the same flag to
  ``eval``, which loads the branch's weights with the rest).
* ``--background-unmined``: with ``mobilenets train --background-every K``, the image-less images kept but not
  mined (SSD's own loss, which learns nothing from them): do the images or their mined boxes teach the background?
* ``--background-ratio R``: with ``mobilenets train --background-every K``, each image-less image mines R
  background boxes per positive of the batch's average image with objects instead of 3: fewer such images
  (a larger K, a shorter epoch) each teaching more background.
* ``--stride-8``: ssdlite_mobilenet_v2 with a third backbone map, block 7's expansion (192 channels at output
  stride 8: 40x40 at 320x320), before the usual two, for the smallest objects (give 8 ``--anchor-scales``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

BOX_LOSSES = ("giou", "diou", "ciou", "l1", "smooth_l1")  # torchvision's detection _box_loss


def _anchor_scales(scales: list[float]) -> None:
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

    import mobilenets.models.ssd as ssd

    class Anchors(DefaultBoxGenerator):
        def __init__(self, levels: int, *, lowest_layer_boxes: int = 6) -> None:
            if len(scales) != levels + 1:
                raise SystemExit(f"--anchor-scales needs {levels + 1} scales for {levels} maps")
            self.lowest_layer_boxes = 6
            super().__init__([[2, 3]] * levels, scales=scales)

        def num_anchors_per_location(self) -> list[int]:
            return [len(pairs) for pairs in self._wh_pairs]

    ssd.SSDAnchors = Anchors


def tall_small_box() -> None:
    """The ``--tall-small-box`` patch (also used by ``default_box_counts.py``)."""
    import math

    import torch

    import mobilenets.models.ssd as ssd

    class Anchors(ssd.SSDAnchors):
        def _generate_wh_pairs(self, num_outputs, dtype=torch.float32, device=torch.device("cpu")):
            pairs = super()._generate_wh_pairs(num_outputs, dtype, device)
            if self.lowest_layer_boxes == 3:  # the TF API's lowest layer: add the 0.1 square's tall twin
                r = math.sqrt(2.0)
                pairs[0] = torch.cat([pairs[0], torch.tensor([[0.1 / r, 0.1 * r]], dtype=dtype, device=device)])
            return pairs

    ssd.SSDAnchors = Anchors


def atss_matches(boxes, anchors, level_sizes: list[int], per_location: list[int], k: int = 9):
    """ATSS's assignment (Zhang et al., CVPR 2020, "Bridging the gap between anchor-based and anchor-free
    detection"): for each object, the default boxes at the ``k`` positions of each map nearest its centre are
    candidates; those overlapping it by at least the mean plus the standard deviation of the candidates' IoUs,
    and centred inside it, learn it (a box claimed twice learns the object it overlaps most). Each object also
    keeps its best default box, as SSD's matcher gives it. ``level_sizes``: the default boxes of each map, in
    the generator's order; ``per_location``: the boxes at one position of each map. Returns each default box's
    object index, -1 for background (as torchvision's matchers)."""
    import torch
    from torchvision.ops import box_iou

    iou = box_iou(boxes, anchors)
    object_centres, anchor_centres = (boxes[:, :2] + boxes[:, 2:]) / 2, (anchors[:, :2] + anchors[:, 2:]) / 2
    distance = torch.cdist(object_centres, anchor_centres)
    candidates, start = [], 0
    for size, boxes_here in zip(level_sizes, per_location):  # a position's boxes share its centre: k positions
        nearest = distance[:, start : start + size].topk(min(k * boxes_here, size), dim=1, largest=False).indices
        candidates.append(nearest + start)
        start += size
    candidates = torch.cat(candidates, 1)
    candidate_iou = iou.gather(1, candidates)
    threshold = candidate_iou.mean(1, keepdim=True) + candidate_iou.std(1, keepdim=True)
    centre = anchor_centres[candidates]  # (objects, candidates, 2)
    inside = ((centre > boxes[:, None, :2]) & (centre < boxes[:, None, 2:])).all(-1)
    kept = torch.full_like(iou, -1.0).scatter_(1, candidates, torch.where(
        (candidate_iou >= threshold) & inside, candidate_iou, torch.full_like(candidate_iou, -1.0)))
    best, matched = kept.max(0)
    matched[best < 0] = -1
    matched[iou.argmax(1)] = torch.arange(len(boxes), device=matched.device)
    return matched


def map_sizes(feature_maps, per_location: list[int]) -> list[int]:
    """Each map's number of default boxes: its positions times the boxes at one position."""
    return [int(f.shape[-2] * f.shape[-1]) * n for f, n in zip(feature_maps, per_location)]


def _atss(k: int) -> None:
    import torch

    import mobilenets.models.ssd as ssd

    class Anchors(ssd.SSDAnchors):
        def forward(self, image_list, feature_maps):  # remember each map's number of default boxes
            self.level_sizes = map_sizes(feature_maps, self.num_anchors_per_location())
            return super().forward(image_list, feature_maps)

    ssd_loss = ssd.Detector.compute_loss

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        generator = self.anchor_generator
        per_location = generator.num_anchors_per_location()
        matched_idxs = [
            atss_matches(target["boxes"], boxes, generator.level_sizes, per_location, k)
            if target["boxes"].numel() else torch.full((len(boxes),), -1, dtype=torch.int64, device=boxes.device)
            for target, boxes in zip(targets, anchors)
        ]
        return ssd_loss(self, targets, head_outputs, anchors, matched_idxs)

    ssd.SSDAnchors = Anchors
    ssd.Detector.compute_loss = compute_loss


def object_weights(matched_idxs, power: float):
    """Each positive default box's weight when every object's boxes share ``n ** (1 - power)`` of the loss
    for its ``n`` boxes (power 0: SSD's, each box 1; power 1: each object the same): scaled so that the
    weights add up to the number of positives, as SSD divides by them. ``matched_idxs``: a list of each
    default box's object index (-1 background), one tensor per image; returns one tensor of weights per
    image, 0 on background boxes."""
    import torch

    weights = []
    for matched in matched_idxs:
        positive = matched >= 0
        boxes_per_object = torch.bincount(matched[positive]).to(torch.float32)  # >= 1 for every object indexed
        weight = torch.zeros(matched.shape, dtype=torch.float32, device=matched.device)
        weight[positive] = boxes_per_object[matched[positive]] ** -power
        weights.append(weight)
    total = sum(float(w.sum()) for w in weights)
    positives = sum(int((m >= 0).sum()) for m in matched_idxs)
    return [w * (positives / total) for w in weights] if total else weights


def ssd_loss(model, targets, head_outputs, anchors, matched_idxs, weights, unmined=None):
    """torchvision's SSD loss with each positive box weighted by ``weights`` (one tensor per image; SSD's own
    are 1) and the boxes marked in ``unmined`` (one boolean tensor per image) left out of the hard negative
    mining, which keeps ``neg_to_pos_ratio`` background boxes per positive in each image."""
    import torch
    import torch.nn.functional as F

    labels, box_losses = [], []
    for target, regression, boxes, matched, weight in zip(
        targets, head_outputs["bbox_regression"], anchors, matched_idxs, weights
    ):
        found = torch.where(matched >= 0)[0]
        encoded = model.box_coder.encode_single(target["boxes"][matched[found]], boxes[found])
        per_box = F.smooth_l1_loss(regression[found], encoded, reduction="none").sum(1)
        box_losses.append((per_box * weight[found]).sum())
        label = torch.zeros(len(matched), dtype=torch.int64, device=matched.device)
        label[found] = target["labels"][matched[found]]
        labels.append(label)
    labels, logits, weights = torch.stack(labels), head_outputs["cls_logits"], torch.stack(weights)
    cls_loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape)
    positive = labels > 0
    negatives = model.neg_to_pos_ratio * positive.sum(1, keepdim=True)
    skipped = positive if unmined is None else positive | torch.stack(unmined)
    ranked = cls_loss.masked_fill(skipped, -float("inf")).argsort(1, descending=True).argsort(1)
    mined = (ranked < negatives) & ~skipped
    count = max(1, int(positive.sum()))
    return {
        "bbox_regression": torch.stack(box_losses).sum() / count,
        "classification": ((cls_loss * weights)[positive].sum() + cls_loss[mined].sum()) / count,
    }


def _balance_objects(power: float) -> None:
    from mobilenets.models.ssd import Detector

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        weights = object_weights(matched_idxs, power)
        return ssd_loss(self, targets, head_outputs, anchors, matched_idxs, weights)

    Detector.compute_loss = compute_loss


def _ignore_from(low: float) -> None:
    from torchvision.ops import box_iou

    from mobilenets.models.ssd import Detector

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        unmined = []
        for target, boxes, matched in zip(targets, anchors, matched_idxs):
            # (SSD's forward computed these overlaps for its matcher, but hands on only the matches)
            best = box_iou(target["boxes"], boxes).amax(0) if target["boxes"].numel() else boxes.new_zeros(len(boxes))
            unmined.append((matched < 0) & (best >= low))  # overlapping an object, under the matching IoU
        return ssd_loss(self, targets, head_outputs, anchors, matched_idxs, object_weights(matched_idxs, 0.0), unmined)

    Detector.compute_loss = compute_loss


def _background_unmined() -> None:
    from mobilenets.models.ssd import Detector

    # the trainer switches the mining on with --background-every; this attribute ignores it
    Detector.mine_empty_images = property(lambda self: False, lambda self, value: None)
    # the trainer's own line says the kept images are mined; the log should say what runs
    print("--background-unmined: the images without objects that --background-every keeps are not mined (SSD's "
          "own loss)", file=sys.stderr)  # fmt: skip


def _background_ratio(ratio: int) -> None:
    from mobilenets.models.ssd import Detector

    Detector.empty_image_ratio = ratio


def box_masks(targets, height: int, width: int, image_size):
    """DES's weak segmentation ground truth (Zhang et al., CVPR 2018): each position of a ``height`` x ``width``
    map over images of ``image_size`` (pixels, as the targets' boxes) takes the class of the smallest box holding
    its centre, 0 (background) where none does. One (height, width) label map per image, stacked."""
    import torch

    rows = (torch.arange(height) + 0.5) * image_size[0] / height
    columns = (torch.arange(width) + 0.5) * image_size[1] / width
    y, x = (t.reshape(-1) for t in torch.meshgrid(rows, columns, indexing="ij"))
    masks = torch.zeros(len(targets), height * width, dtype=torch.int64)
    for mask, target in zip(masks, targets):
        boxes, labels = target["boxes"].float().cpu(), target["labels"].cpu()
        if not len(boxes):
            continue
        inside = (x > boxes[:, None, 0]) & (x < boxes[:, None, 2]) & (y > boxes[:, None, 1]) & (y < boxes[:, None, 3])
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None].expand_as(inside)
        smallest = area.masked_fill(~inside, float("inf")).argmin(0)
        mask[:] = torch.where(inside.any(0), labels[smallest], 0)
    return masks.view(len(targets), height, width)


def _box_segmentation(weight: float) -> None:
    import torch.nn.functional as F
    from torch import nn

    import mobilenets.models.ssd as ssd

    class Head(ssd.SSDHead):
        def __init__(self, channels, anchors, num_classes, lite, kernel):
            super().__init__(channels, anchors, num_classes, lite, kernel)
            self.box_segmentation = nn.Conv2d(channels[0], num_classes, 1)  # on the finest map: small objects
            nn.init.normal_(self.box_segmentation.weight, 0.0, 0.03)
            nn.init.zeros_(self.box_segmentation.bias)

        def forward(self, x):
            outputs = super().forward(x)
            if self.training:  # a training signal only: evaluation and export see SSD's two outputs
                outputs["box_segmentation"] = self.box_segmentation(x[0])
            return outputs

    ssd_loss = ssd.Detector.compute_loss

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        losses = ssd_loss(self, targets, head_outputs, anchors, matched_idxs)
        logits = head_outputs["box_segmentation"]
        side = self.transform.fixed_size  # (height, width) of the resized images the boxes are in
        masks = box_masks(targets, logits.shape[-2], logits.shape[-1], side).to(logits.device)
        # the trainer adds the box and class losses: the segmentation loss rides on the class loss
        losses["classification"] = losses["classification"] + weight * F.cross_entropy(logits.float(), masks)
        return losses

    ssd.SSDHead = Head
    ssd.Detector.compute_loss = compute_loss


def _stride_8() -> None:
    import mobilenets.models.ssd as ssd

    build = ssd.build_ssd  # the registered builders call it with their spec

    def build_ssd(spec, **options):
        if spec is ssd.SSD_SPECS["ssdlite_mobilenet_v2"]:
            spec = replace(spec, taps=("7.expansion", *spec.taps))
        return build(spec, **options)

    ssd.build_ssd = build_ssd


def _replace_training_samples(make, probability: float, usable=lambda dataset: True) -> None:
    """With chance ``probability``, a training sample of a detection dataset (one whose transforms crop)
    is ``make(dataset, index)`` - (uint8 image C x H x W, boxes, labels, (H, W)) - augmented as usual."""
    import torch
    from torchvision import tv_tensors
    from torchvision.transforms import v2 as T

    from mobilenets.detection import data

    original = data.BoxDataset.__getitem__

    def getitem(self, index):
        training = self.transforms is not None and any(
            isinstance(t, T.RandomIoUCrop) for t in self.transforms.transforms
        )
        if not training or not usable(self) or float(torch.rand(())) >= probability:
            return original(self, index)
        image, boxes, labels, size = make(self, index)
        target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=size), "labels": labels,
                  "image_id": index}  # fmt: skip
        return self.transforms(tv_tensors.Image(image), target)

    data.BoxDataset.__getitem__ = getitem


def _copy_paste(probability: float, masks: str, mask_ids: list[int]) -> None:
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image

    from mobilenets.data import load_rgb

    folder = Path(masks)

    def sources(dataset):  # training images holding kept objects and a mask: cut from them
        if not hasattr(dataset, "_paste_sources"):
            dataset._paste_sources = [i for i, (boxes, _, _) in enumerate(dataset.targets)
                                      if len(boxes) and (folder / f"{dataset.files[i].stem}.png").is_file()]  # fmt: skip
        return dataset._paste_sources

    def pasted(dataset, index):
        """The image with another image's objects pasted on it, and the boxes and labels of both."""
        image = np.array(load_rgb(dataset.files[index]))
        boxes, labels, (height, width) = dataset.targets[index]
        choices = [i for i in sources(dataset) if i != index]
        source = choices[int(torch.randint(len(choices), ()))]
        picture = np.array(load_rgb(dataset.files[source]))
        mask = np.array(Image.open(folder / f"{dataset.files[source].stem}.png"))
        source_boxes, source_labels, (source_height, source_width) = dataset.targets[source]
        new_boxes, new_labels = [boxes], [labels]
        for box, label in zip(source_boxes.tolist(), source_labels.tolist()):
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            cut = mask[y1:y2, x1:x2] == mask_ids[label - 1]
            if cut.sum() < 64:  # too small or not in the mask: nothing to cut out
                continue
            tx1, ty1 = int(x1 / source_width * width), int(y1 / source_height * height)
            tx2, ty2 = max(tx1 + 1, int(x2 / source_width * width)), max(ty1 + 1, int(y2 / source_height * height))
            size = (tx2 - tx1, ty2 - ty1)
            piece = np.array(Image.fromarray(picture[y1:y2, x1:x2]).resize(size))
            keep = np.array(Image.fromarray(cut.astype(np.uint8) * 255).resize(size)) > 127
            image[ty1:ty2, tx1:tx2][keep] = piece[keep]
            new_boxes.append(torch.tensor([[tx1, ty1, tx2, ty2]], dtype=torch.float32))
            new_labels.append(torch.tensor([label]))
        return torch.from_numpy(image).permute(2, 0, 1), torch.cat(new_boxes), torch.cat(new_labels), (height, width)

    _replace_training_samples(pasted, probability, usable=lambda dataset: len(sources(dataset)) >= 2)


def _mosaic(probability: float) -> None:
    import torch
    from torchvision.transforms import v2 as T

    from mobilenets.data import load_rgb

    def mosaic(dataset, index):
        picks = [index, *torch.randint(len(dataset), (3,)).tolist()]
        side = max(max(dataset.targets[i][2]) for i in picks)
        canvas = torch.full((3, 2 * side, 2 * side), 127, dtype=torch.uint8)
        cx, cy = (int(side * (0.5 + float(torch.rand(())))) for _ in range(2))
        all_boxes, all_labels = [], []
        for quarter, i in enumerate(picks):  # top-left, top-right, bottom-left, bottom-right of the centre
            image = T.functional.pil_to_tensor(load_rgb(dataset.files[i]))
            boxes, labels, (height, width) = dataset.targets[i]
            x0 = cx - width if quarter in (0, 2) else cx
            y0 = cy - height if quarter in (0, 1) else cy
            # the part of the image inside the canvas
            left, top = max(0, -x0), max(0, -y0)
            right, bottom = min(width, 2 * side - x0), min(height, 2 * side - y0)
            canvas[:, y0 + top:y0 + bottom, x0 + left:x0 + right] = image[:, top:bottom, left:right]
            all_boxes.append(boxes + torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype))
            all_labels.append(labels)
        window = side // 2
        image = canvas[:, window:window + side, window:window + side]
        boxes, labels = torch.cat(all_boxes) - window, torch.cat(all_labels)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        boxes = boxes.clamp(0, side)
        kept = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) >= 0.2 * area
        return image, boxes[kept], labels[kept], (side, side)

    _replace_training_samples(mosaic, probability)


def _box_loss(kind: str, weight: float) -> None:
    import torch
    from torchvision.models.detection import _utils as det_utils

    from mobilenets.models.ssd import Detector

    ssd_loss = Detector.compute_loss

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        losses = ssd_loss(self, targets, head_outputs, anchors, matched_idxs)  # its classification loss
        total, positives = 0.0, 0
        for target, regression, boxes, matched in zip(targets, head_outputs["bbox_regression"], anchors, matched_idxs):
            found = torch.where(matched >= 0)[0]
            total = total + det_utils._box_loss(kind, self.box_coder, boxes[found], target["boxes"][matched[found]],
                                                regression[found])  # fmt: skip
            positives += found.numel()
        losses["bbox_regression"] = weight * total / max(1, positives)
        return losses

    Detector.compute_loss = compute_loss


def _neg_ratio(ratio: int) -> None:
    from mobilenets.models.ssd import Detector

    init = Detector.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.neg_to_pos_ratio = ratio  # read by torchvision's SSD.compute_loss

    Detector.__init__ = __init__


def focal_classification_loss(logits, labels, alpha: float, gamma: float):
    """RetinaNet's loss in its softmax form: (N, boxes, classes) scores against (N, boxes) labels
    (0 background), -ALPHA_t (1 - p)^GAMMA log p of each box's true class, summed over every box
    and divided by the boxes holding an object."""
    import torch
    import torch.nn.functional as F

    log_p = F.log_softmax(logits, dim=-1).gather(-1, labels[..., None]).squeeze(-1)
    weight = torch.where(labels > 0, alpha, 1 - alpha) * (1 - log_p.exp()).pow(gamma)
    return -(weight * log_p).sum() / (labels > 0).sum().clamp(min=1)


def background_bias(num_classes: int, prior: float = 0.01) -> float:
    """The background score that, with the others at 0, gives each object class probability ``prior``."""
    import math

    return math.log(1 / prior - (num_classes - 1))


def _focal(alpha: float, gamma: float) -> None:
    import torch

    from mobilenets.models import ssd

    ssd_loss, build = ssd.Detector.compute_loss, ssd.build_ssd

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        losses = ssd_loss(self, targets, head_outputs, anchors, matched_idxs)  # its box loss
        labels = torch.zeros_like(torch.stack(matched_idxs))  # background where no object matched
        for row, target, matched in zip(labels, targets, matched_idxs):
            row[matched >= 0] = target["labels"][matched[matched >= 0]]
        losses["classification"] = focal_classification_loss(head_outputs["cls_logits"], labels, alpha, gamma)
        return losses

    def build_ssd(spec, *, num_classes, **options):
        model = build(spec, num_classes=num_classes, **options)
        for level in model.head.classification_head.module_list:  # channels: box 0's classes, box 1's, ...
            level[-1].bias.data[::num_classes] = background_bias(num_classes)
        return model

    ssd.Detector.compute_loss = compute_loss
    ssd.build_ssd = build_ssd


def _named_part(name: str, rule, text: str):
    """One part of a compound option value, checked by ``rule``; a refusal names the part."""
    try:
        return rule.argtype(text)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{name} {error}") from None


def _focal_option(text: str) -> tuple[float, float]:
    from mobilenets.validate import NON_NEGATIVE, Rule

    alpha, _, gamma = text.partition(":")
    # ALPHA 0 would never teach the objects, 1 never the background
    alpha_rule = Rule(float, lambda v: 0 < v < 1, "in (0, 1)")
    return _named_part("ALPHA", alpha_rule, alpha), _named_part("GAMMA", NON_NEGATIVE, gamma or "2")


def _wrap_crop(wrap) -> None:
    """The training crop becomes ``wrap(crop)``: detection_transforms builds it as ``T.RandomIoUCrop()``,
    so each patch replaces that name, around whatever the patch before left there."""
    from torchvision.transforms import v2 as T

    make_crop = T.RandomIoUCrop
    T.RandomIoUCrop = lambda: wrap(make_crop())


def _crop_chance(probability: float) -> None:
    from torchvision.transforms import v2 as T

    _wrap_crop(lambda crop: T.RandomApply([crop], p=probability))


def _photometric(probability: float) -> None:
    from torchvision.transforms import v2 as T

    _wrap_crop(lambda crop: T.Compose([T.RandomPhotometricDistort(p=probability), crop]))  # first, as in SSD


def _multi_scale(sides: list[int]) -> None:
    import torch

    import mobilenets.models.ssd as ssd

    forward = ssd.Detector.forward

    def multi_scale_forward(self, images, targets=None):
        if not self.training:  # evaluation (and the exported graph) at the model's own side
            return forward(self, images, targets)
        side = sides[int(torch.randint(len(sides), ()))]  # one side per batch, from the run's seeded generator
        fixed, self.transform.fixed_size = self.transform.fixed_size, (side, side)
        try:
            return forward(self, images, targets)
        finally:
            self.transform.fixed_size = fixed

    ssd.Detector.forward = multi_scale_forward


def _other_objects() -> None:
    import torch

    import mobilenets.detection.data as data

    keep_classes = data._keep_classes

    def keep_and_label_the_rest(found, wanted, data_dir):
        train = found.train
        if train is None:
            return keep_classes(found, wanted, data_dir)
        before = list(train.targets)
        kept = keep_classes(found, wanted, data_dir)
        number = {name: label for label, name in enumerate(kept.classes) if label}
        other = len(kept.classes)
        relabel = [number.get(name, other) for name in found.classes]  # the original label -> the new one
        # the training split only: every other object becomes one more class; validation scores the kept ones
        train.targets = [
            (boxes, torch.tensor([relabel[int(i)] for i in ids], dtype=torch.int64), size)
            if len(new_ids) else (boxes[:0], ids[:0], size)  # an image without a kept object stays empty
            for (boxes, ids, size), (_, new_ids, _) in zip(before, train.targets)
        ]
        return data.DetectionData(train, kept.val, [*kept.classes, "other object"], kept.layout, kept.selected)

    data._keep_classes = keep_and_label_the_rest


def _sgd(lr: float) -> None:
    from mobilenets.train import recipes

    recipes.RECIPES["coco-ssdlite"] = replace(recipes.RECIPES["coco-ssdlite"], optimizer="sgd", lr=lr, momentum=0.9)


def _box_loss_option(text: str) -> tuple[str, float]:
    from mobilenets.validate import POSITIVE

    kind, _, weight = text.partition(":")
    if kind not in BOX_LOSSES:
        raise argparse.ArgumentTypeError(f"TYPE must be one of {', '.join(BOX_LOSSES)}, got {kind!r}")
    return kind, _named_part("WEIGHT", POSITIVE, weight or "1")


def main() -> int:
    from mobilenets.validate import POSITIVE, POSITIVE_INT, PROBABILITY, csv_of

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--anchor-scales", type=lambda text: [float(s) for s in text.split(",")])
    parser.add_argument("--sgd-lr", type=float)
    parser.add_argument("--stride-8", action="store_true")
    parser.add_argument("--tall-small-box", action="store_true")
    parser.add_argument("--box-loss", type=_box_loss_option, metavar="TYPE[:WEIGHT]")
    parser.add_argument("--neg-ratio", type=POSITIVE_INT.argtype, metavar="R")
    parser.add_argument("--focal", type=_focal_option, metavar="ALPHA:GAMMA")
    parser.add_argument("--mosaic", type=PROBABILITY.argtype, metavar="P")
    parser.add_argument("--crop-chance", type=PROBABILITY.argtype, metavar="P")
    parser.add_argument("--photometric", type=PROBABILITY.argtype, metavar="P")
    parser.add_argument("--copy-paste", nargs=2, metavar=("P", "MASKS"))
    parser.add_argument("--mask-ids", default="1", help="each kept class's id in the masks, comma-separated")
    parser.add_argument("--multi-scale", type=csv_of(POSITIVE_INT), metavar="S1,S2,...")
    parser.add_argument("--other-objects", action="store_true")
    parser.add_argument("--atss", type=POSITIVE_INT.argtype, metavar="K")
    parser.add_argument("--balance-objects", type=PROBABILITY.argtype, metavar="POWER")
    parser.add_argument("--ignore-from", type=PROBABILITY.argtype, metavar="IOU")
    parser.add_argument("--box-segmentation", type=POSITIVE.argtype, metavar="WEIGHT")
    parser.add_argument("--background-unmined", action="store_true")
    parser.add_argument("--background-ratio", type=POSITIVE_INT.argtype, metavar="R")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the mobilenets command line")
    args = parser.parse_args()
    if args.anchor_scales:
        _anchor_scales(args.anchor_scales)
    if args.stride_8:
        _stride_8()
    if args.tall_small_box:
        tall_small_box()
    if args.atss:
        _atss(args.atss)
    if args.balance_objects is not None:
        _balance_objects(args.balance_objects)
    if args.ignore_from is not None:
        _ignore_from(args.ignore_from)
    if args.box_segmentation:
        _box_segmentation(args.box_segmentation)
    if args.background_unmined:
        _background_unmined()
    if args.background_ratio:
        _background_ratio(args.background_ratio)
    if args.box_loss:
        _box_loss(*args.box_loss)
    if args.neg_ratio:
        _neg_ratio(args.neg_ratio)
    if args.focal:
        _focal(*args.focal)
    if args.sgd_lr:
        _sgd(args.sgd_lr)
    if args.mosaic:
        _mosaic(args.mosaic)
    if args.crop_chance is not None:
        _crop_chance(args.crop_chance)
    if args.photometric is not None:
        _photometric(args.photometric)  # after _crop_chance: every image is distorted, cropped or not
    if args.multi_scale:
        _multi_scale(args.multi_scale)
    if args.other_objects:
        if not any(arg.split("=")[0] == "--classes" for arg in args.command):  # the patch acts through --classes
            parser.error("--other-objects labels the objects --classes leaves out; give the train command --classes")
        _other_objects()
    if args.copy_paste:
        _copy_paste(float(args.copy_paste[0]), args.copy_paste[1], [int(i) for i in args.mask_ids.split(",")])
    from mobilenets.cli import main as cli_main

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return cli_main(command)


if __name__ == "__main__":
    sys.exit(main())
