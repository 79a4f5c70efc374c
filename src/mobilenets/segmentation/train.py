"""Training a segmenter with the library's training loop.

:class:`SegmentationTrainer` supplies what a segmenter's training needs beyond the shared
backbone-task trainer (``train.backbone_tasks``): the data (image/mask pairs or Pascal VOC,
masks augmented with the images), a batch's loss (per-pixel cross-entropy, 255 ignored,
plus 0.5 x the auxiliary head's where the model has one, as torchvision's references train)
and the evaluation (mIoU from one confusion matrix, best.pt chosen by it); the loop keeps
exact resume, torchrun DDP, AMP, EMA, a slower or frozen body, checkpoints and metrics files.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..train.backbone_tasks import BODY_PREFIX, BackboneTaskTrainer
from .data import IGNORE, collate, find_segmentation_data, segmentation_transforms
from .evaluate import evaluate_segmenter

__all__ = ["BODY_PREFIX", "SegmentationTrainer"]

AUX_WEIGHT = 0.5  # torchvision's references weigh the auxiliary FCN head's loss so


class SegmentationTrainer(BackboneTaskTrainer):
    task = "segmentation"
    default_recipe = "seg-small"
    score_key = "miou"
    collate = staticmethod(collate)
    reported_metrics = ("miou", "pixel_acc")
    recipes_hint = "segmenters train with --recipe seg-small or seg-voc"

    def _find_data(self):
        data = find_segmentation_data(
            self.config.data_dir,
            train_transforms=segmentation_transforms(self.resolution, train=True),
            val_transforms=segmentation_transforms(self.resolution, train=False),
            progress=self.progress,
            classes=self.config.classes,
        )
        self.class_ids = data.class_ids
        return data

    def _recorded(self) -> dict[str, Any]:
        return {"class_ids": self.class_ids}  # recorded in checkpoints: masks are written in these ids

    def _class_scores(self, model: nn.Module, head: list[str]) -> list[str]:
        """The final 1x1 convs, whose outputs are the classes."""
        scoring = []
        for name in head:
            module = model.get_submodule(name.rsplit(".", 1)[0])
            if isinstance(module, nn.Conv2d) and module.out_channels == model.arch["num_classes"]:
                scoring.append(name)
        return scoring

    def _to_device(self, batch) -> tuple[Tensor, Tensor, int]:
        images, masks = batch
        if isinstance(images, list):
            raise ConfigError("training crops must share one size; the segmentation transforms crop to --resolution")
        images = images.as_subclass(Tensor).to(self.device, non_blocking=True)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, masks.as_subclass(Tensor).to(self.device, non_blocking=True), len(images)

    def _loss(self, images: Tensor, masks: Tensor) -> Tensor:
        outputs = self.net(images)
        loss = F.cross_entropy(outputs["out"], masks, ignore_index=IGNORE)
        if "aux" in outputs:
            loss = loss + AUX_WEIGHT * F.cross_entropy(outputs["aux"], masks, ignore_index=IGNORE)
        return loss

    def _evaluate(self, model: nn.Module) -> dict[str, Any]:
        return evaluate_segmenter(model, self.val_loader, len(self.classes), self.resolution, self.device,
                                  dist=self.dist, progress=self.progress, flip=self.config.test_flip)  # fmt: skip

    def _metrics_text(self, record: dict[str, Any]) -> str:
        return f"val mIoU {100 * record['miou']:.2f}%, pixel acc {100 * record['pixel_acc']:.2f}%"
