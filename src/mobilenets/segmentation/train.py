"""Training a segmenter with the library's training loop.

:class:`SegmentationTrainer` replaces what differs from classification - the data
(image/mask pairs or Pascal VOC, masks augmented with the images), the model
(``num_classes`` = the dataset's classes; ``--init-from`` a classifier's weights start
the backbone, a segmenter's the whole network), a batch's loss (per-pixel cross-entropy,
255 ignored, plus 0.5 x the auxiliary head's where the model has one, as torchvision's
references train) and the evaluation (mIoU from one confusion matrix, best.pt chosen by
it) - and keeps everything else the loop guarantees: exact resume, torchrun DDP, AMP,
EMA, a slower or frozen body, checkpoints and metrics files.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Subset

from ..errors import ConfigError
from ..models import create_model, get_model_entry
from ..tasks import get_task, task_for_recipe
from ..train.loop import Trainer
from ..weights import load_pretrained, load_state_dict_file, load_weights
from .data import IGNORE, collate, find_segmentation_data, segmentation_transforms
from .evaluate import evaluate_segmenter

__all__ = ["BODY_PREFIX", "SegmentationTrainer"]

# The pretrained part of a segmenter: the classifier body it was cut from.
BODY_PREFIX = "backbone.body."
AUX_WEIGHT = 0.5  # torchvision's references weigh the auxiliary FCN head's loss so


class SegmentationTrainer(Trainer):
    task = "segmentation"
    score_key = "miou"
    collate = staticmethod(collate)
    reported_metrics = ("miou", "pixel_acc")
    body_prefix = BODY_PREFIX

    def _default_resolution(self) -> int:
        return get_model_entry(self.config.model).default_resolution

    def _datasets(self):
        config = self.config
        refused = [flag for flag, value in (("--teacher", config.teacher), ("--unlabelled", config.unlabelled),
                   ("--qat", config.qat), ("--activation", config.activation), ("--dataset", config.dataset),
                   ("--data-on-device", config.data_on_device)) if value]  # fmt: skip
        if refused:
            raise ConfigError(f"{', '.join(refused)}: not available for segmentation models ({config.model})")
        task = task_for_recipe(self.recipe.transforms)
        if task is not get_task(self.task):
            raise ConfigError(
                f"recipe {self.recipe.name} is for {task.name} models; segmenters train with --recipe seg-small or seg-voc"
            )
        data = find_segmentation_data(
            config.data_dir,
            train_transforms=segmentation_transforms(self.resolution, train=True),
            val_transforms=segmentation_transforms(self.resolution, train=False),
            progress=self.progress,
            classes=config.classes,
        )
        self.class_ids, self.selected_classes = data.class_ids, data.selected
        train_set, val_set = data.train, data.val
        if config.train_subset:
            train_set = Subset(train_set, range(min(config.train_subset, len(train_set))))
        if config.val_subset:
            val_set = Subset(val_set, range(min(config.val_subset, len(val_set))))
        return train_set, val_set, data.classes

    def _create_model(self) -> tuple[nn.Module, list[str]]:
        config = self.config
        self.resolved["class_ids"] = self.class_ids  # recorded in checkpoints: masks are written in these ids
        model = create_model(
            config.model, num_classes=len(self.classes), width_mult=config.width_mult, resolution=self.resolution
        )
        # Everything but the pretrained body is new: the heads learn at the full rate.
        head = [name for name, _ in model.named_parameters() if not name.startswith(BODY_PREFIX)]
        if config.init_from:
            state, _ = load_state_dict_file(config.init_from)
            if any(key.startswith("backbone.") for key in state):  # a segmenter's file (a classifier has no backbone.)
                # the final 1x1 convs that score the classes start anew if the class count differs
                scoring = [n for n in head if self._scores_classes(model, n)]
                model, loaded, fresh = load_pretrained(model, config.init_from, head=scoring)
                self.log(f"started from the segmenter {config.init_from}: {len(loaded)} tensors loaded"
                         + (f"; class scores new for {len(self.classes)} classes" if fresh else ""))  # fmt: skip
            else:  # a classifier's weights (ours, torchvision's) start the backbone
                body = model.backbone.body
                load_weights(body, config.init_from)
                self.log(
                    f"started the backbone from {config.init_from}: {len(body.state_dict())} tensors loaded; "
                    f"heads new ({len(head)} tensors)"
                )
        return model, head

    @staticmethod
    def _scores_classes(model: nn.Module, name: str) -> bool:
        """Whether parameter ``name`` belongs to a conv whose outputs are the classes."""
        module = model.get_submodule(name.rsplit(".", 1)[0])
        return isinstance(module, nn.Conv2d) and module.out_channels == model.arch["num_classes"]

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
                                  dist=self.dist, progress=self.progress)  # fmt: skip

    def _epoch_line(self, record: dict[str, Any]) -> str:
        return (
            f"epoch {record['epoch']}/{self.recipe.epochs}: train loss {record['train_loss']:.4f}, "
            f"val mIoU {100 * record['miou']:.2f}%, pixel acc {100 * record['pixel_acc']:.2f}%, "
            f"{record['train_images_per_s']:.1f} img/s"
        )
