"""Training a detector with the library's training loop.

:class:`DetectionTrainer` supplies what a detector's training needs beyond the shared
backbone-task trainer (``train.backbone_tasks``): the data (YOLO or COCO, boxes augmented
with the images, ``num_classes`` = the dataset's classes + background), a batch's loss
(torchvision's SSD: smooth-L1 on matched boxes + cross-entropy with 3:1 hard negative mining)
and the evaluation (COCO mAP, best.pt chosen by it); the loop keeps exact resume, torchrun
DDP, AMP, EMA, a slower or frozen body, checkpoints and metrics files.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..errors import DataError
from ..models.ssd import IMAGENET_MEAN, SSD_SPECS
from ..train.backbone_tasks import BODY_PREFIX, BackboneTaskTrainer
from .data import collate, detection_transforms, find_detection_data
from .evaluate import evaluate_detector

__all__ = ["BODY_PREFIX", "DetectionTrainer"]


class DetectionTrainer(BackboneTaskTrainer):
    task = "detection"
    default_recipe = "coco-ssdlite"
    score_key = "map"
    collate = staticmethod(collate)
    reported_metrics = ("map", "map50")
    recipes_hint = "detectors train with --recipe coco-ssdlite or coco-ssd"

    def _find_data(self):
        spec = SSD_SPECS.get(self.config.model)
        fill = spec.image_mean if spec is not None else IMAGENET_MEAN
        data = find_detection_data(
            self.config.data_dir,
            train_transforms=detection_transforms(self.recipe.transforms, self.resolution, train=True, fill=fill),
            val_transforms=detection_transforms(self.recipe.transforms, self.resolution, train=False, fill=fill),
            classes=self.config.classes,
        )
        if self.config.skip_empty_images or self.config.background_every:
            self._select_training_images(data.train)
        return data

    def _select_training_images(self, train) -> None:
        # torchvision's SSD mines 3 background boxes per object *in the same image*, so an image
        # without objects adds nothing to the loss, only its time - unless --background-every keeps
        # some and the detector mines them (Detector.mine_empty_images)
        total, every = len(train), self.config.background_every
        dropped = train.drop_empty(every or 0)
        holding = sum(1 for _, labels, _ in train.targets if len(labels))
        if not holding:
            raise DataError(f"--data-dir {self.config.data_dir}: none of the {total} training images holds an object"
                            + (f" of {self.config.classes}" if self.config.classes else ""))  # fmt: skip
        if every:
            self.log(f"training on the {holding} of {total} images that hold an object and {len(train) - holding} of "
                     f"the others (every {every}), their hardest default boxes taught as background")  # fmt: skip
        elif dropped:
            self.log(f"training on the {len(train)} of {total} images that hold an object (SSD's loss learns nothing "
                     "from the others)")  # fmt: skip

    def _create_model(self) -> tuple[nn.Module, list[str]]:
        model, head = super()._create_model()
        model.match_boxes_at(self.recipe.match_iou, self.recipe.match_min_boxes)
        model.mine_empty_images = bool(self.config.background_every)
        return model, head

    def _class_scores(self, model: nn.Module, head: list[str]) -> list[str]:
        return [name for name in head if name.startswith("head.classification_head.")]

    def _to_device(self, batch) -> tuple[list[Tensor], list[dict[str, Tensor]], int]:
        images, targets = batch
        images = [image.to(self.device, non_blocking=True) for image in images]
        targets = [
            {"boxes": t["boxes"].as_subclass(Tensor).to(self.device), "labels": t["labels"].to(self.device)}
            for t in targets
        ]
        return images, targets, len(images)

    def _loss(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> Tensor:
        losses = self.net(images, targets)  # torchvision's SSD: box regression + classification
        return losses["bbox_regression"] + losses["classification"]

    def _bn_forward(self, model: nn.Module):
        # torchvision's SSD wants targets in training mode; its batch norms are all in the
        # backbone and the head, which this runs as SSD.forward does.
        def forward(images: list[Tensor]) -> None:
            batch, _ = model.transform(images)
            features = model.backbone(batch.tensors)
            model.head(list(features.values()) if isinstance(features, dict) else [features])

        return forward

    def _evaluate(self, model: nn.Module) -> dict[str, Any]:
        return evaluate_detector(model, self.val_loader, self.device, dist=self.dist, progress=self.progress,
                                 flip=self.config.test_flip)  # fmt: skip

    def _metrics_text(self, record: dict[str, Any]) -> str:
        return f"val mAP {100 * record['map']:.2f}%, mAP50 {100 * record['map50']:.2f}%"
