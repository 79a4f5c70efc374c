"""Training a detector with the library's training loop.

:class:`DetectionTrainer` replaces what differs from classification - the data (YOLO
or COCO, boxes augmented with the images), the model (``num_classes`` = the dataset's
classes + background; ``--init-from`` a classifier's weights start the backbone, a
detector's the whole network), a batch's loss (torchvision's SSD: smooth-L1 on matched
boxes + cross-entropy with 3:1 hard negative mining) and the evaluation (COCO mAP,
best.pt chosen by it) - and keeps everything else the loop guarantees: exact resume,
torchrun DDP, AMP, EMA, a slower or frozen body, checkpoints and metrics files.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.utils.data import Subset

from ..errors import ConfigError
from ..models import create_model, get_model_entry
from ..models.ssd import IMAGENET_MEAN, SSD_SPECS
from ..predict import renamed_classes
from ..tasks import get_task, task_for_recipe
from ..train.loop import Trainer
from ..weights import load_pretrained, load_weights, read_weights_file
from .data import collate, detection_transforms, find_detection_data
from .evaluate import evaluate_detector

__all__ = ["BODY_PREFIX", "DetectionTrainer"]

# The pretrained part of a detector: the classifier body it was cut from.
BODY_PREFIX = "backbone.body."


class DetectionTrainer(Trainer):
    task = "detection"
    score_key = "map"
    collate = staticmethod(collate)
    reported_metrics = ("map", "map50")
    body_prefix = BODY_PREFIX

    def _default_resolution(self) -> int:
        return get_model_entry(self.config.model).default_resolution

    def _datasets(self):
        config = self.config
        refused = [flag for flag, value in (("--teacher", config.teacher), ("--unlabelled", config.unlabelled),
                   ("--qat", config.qat), ("--cifar recipe", self.recipe.cifar_strides),
                   ("--activation", config.activation), ("--dataset", config.dataset)) if value]  # fmt: skip
        if refused:
            raise ConfigError(f"{', '.join(refused)}: not available for detectors ({config.model})")
        task = task_for_recipe(self.recipe.transforms)
        if task is not get_task(self.task):
            raise ConfigError(
                f"recipe {self.recipe.name} is for {task.name} models; detectors train with --recipe coco-ssdlite or coco-ssd"
            )
        spec = SSD_SPECS.get(config.model)
        fill = spec.image_mean if spec is not None else IMAGENET_MEAN
        data = find_detection_data(
            config.data_dir,
            train_transforms=detection_transforms(self.recipe.transforms, self.resolution, train=True, fill=fill),
            val_transforms=detection_transforms(self.recipe.transforms, self.resolution, train=False, fill=fill),
            classes=config.classes,
        )
        self.selected_classes = data.selected
        train_set, val_set = data.train, data.val
        if config.train_subset:
            train_set = Subset(train_set, range(min(config.train_subset, len(train_set))))
        if config.val_subset:
            val_set = Subset(val_set, range(min(config.val_subset, len(val_set))))
        return train_set, val_set, data.classes

    def _create_model(self) -> tuple[nn.Module, list[str]]:
        config = self.config
        model = create_model(
            config.model, num_classes=len(self.classes), width_mult=config.width_mult, resolution=self.resolution
        )
        # Everything but the pretrained body is new: extra layers and heads learn at the full rate.
        head = [name for name, _ in model.named_parameters() if not name.startswith(BODY_PREFIX)]
        if config.init_from:
            state, _, info = read_weights_file(config.init_from)
            if any(key.startswith(("backbone.", "head.")) for key in state):  # a detector's file
                class_convs = [n for n in head if n.startswith("head.classification_head.")]
                renamed = renamed_classes(info, self.classes, config.init_from)
                # (the path, not the state read above, so that a mismatch names the file)
                model, loaded, fresh = load_pretrained(model, config.init_from, head=class_convs,
                                                       new_classes=bool(renamed))  # fmt: skip
                self.log(f"started from the detector {config.init_from}: {len(loaded)} tensors loaded"
                         + (f"; class predictions new for {len(self.classes) - 1} classes" if fresh else "")
                         + (f" ({renamed})" if renamed else ""))  # fmt: skip
            else:  # a classifier's weights (ours, torchvision's) start the backbone
                body = model.backbone.body
                load_weights(body, config.init_from)
                self.log(
                    f"started the backbone from {config.init_from}: {len(body.state_dict())} tensors loaded; "
                    f"extra layers and heads new ({len(head)} tensors)"
                )
        return model, head

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
        return evaluate_detector(model, self.val_loader, self.device, dist=self.dist, progress=self.progress)

    def _epoch_line(self, record: dict[str, Any]) -> str:
        return (
            f"epoch {record['epoch']}/{self.recipe.epochs}: train loss {record['train_loss']:.4f}, "
            f"val mAP {100 * record['map']:.2f}%, mAP50 {100 * record['map50']:.2f}%, "
            f"{record['train_images_per_s']:.1f} img/s"
        )
