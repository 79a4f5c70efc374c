"""Training a classifier with the library's training loop.

:class:`ClassificationTrainer` supplies what the generic loop (``mobilenets.train.loop``) asks
of a task - class folders or CIFAR-10 as data, a classifier (with the V2 paper's ablation
options) as model, cross-entropy as loss, top-1/top-5 as evaluation - and the pieces only a
classifier has, each composed in where asked for: distillation from a teacher (a wrapping
loss, ``train.transfer.Distillation``), images without labels learnt from it, quantization-aware
training (a model transform, ``export.qat``), CIFAR data held on the device and test-time flips.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset

from ..data import DeviceResidentLoader, ResumableSampler, SeededDataset, build_datasets, transforms_for
from ..errors import ConfigError
from ..models import create_model
from ..predict import renamed_classes
from ..tasks import get_task, task_for_recipe
from ..train.loop import Trainer
from ..train.transfer import Distillation, Teacher, UnlabelledImages, head_parameter_names
from ..weights import load_pretrained, read_weights_file
from .evaluate import evaluate

__all__ = ["ClassificationTrainer"]


class ClassificationTrainer(Trainer):
    task = "classification"
    default_recipe = "cifar10"
    score_key = "top1"
    reported_metrics = ("loss", "top1", "top5")
    images_per_s_format = ".0f"

    # -- data ------------------------------------------------------------------------
    def _default_resolution(self) -> int:
        return 32 if self.recipe.transforms == "cifar" else 224

    def _datasets(self):
        config = self.config
        task = task_for_recipe(self.recipe.transforms)
        if task is not get_task(self.task):
            raise ConfigError(f"recipe {self.recipe.name} is for {task.name} models; {config.model} is a classifier "
                              "(see mobilenets recipes)")  # fmt: skip
        train_set, val_set, classes = build_datasets(
            config.data_dir,
            style=self.recipe.transforms,
            resolution=self.resolution,
            dataset=config.dataset,
            download=config.download and self.dist.is_main,
            train_subset=config.train_subset,
            val_subset=config.val_subset,
            seed=config.seed,
        )
        if len(classes) < 2:
            self.log(
                f"warning: {config.data_dir} has a single class ({classes[0]}): every prediction is right, "
                "so top-1 will read 100% whatever the model learns"
            )
        self.distillation = self._distillation(classes)
        if config.unlabelled:
            train_set = self._with_unlabelled(train_set)
        return train_set, val_set, classes

    def _distillation(self, classes: list[str]) -> Distillation | None:
        config = self.config
        if not config.teacher:
            return None
        teacher = Teacher(
            config.teacher, model_name=config.teacher_model, num_classes=len(classes),
            student_style=self.recipe.transforms, student_classes=classes,
        ).to(self.device)  # fmt: skip
        self.log(f"teacher {config.teacher} loaded: the loss is {1 - config.distill_weight:g} x cross-entropy + "
                 f"{config.distill_weight:g} x T^2 KL at T {config.temperature:g}")  # fmt: skip
        return Distillation(teacher, weight=config.distill_weight, temperature=config.temperature,
                            label_smoothing=self.recipe.label_smoothing)  # fmt: skip

    def _with_unlabelled(self, train_set):
        """The --unlabelled images alone (learnt from the teacher), or beside the labelled ones."""
        config = self.config
        if not config.teacher:
            raise ConfigError(
                "images without labels are learnt from a teacher: give teacher=",
                cli="--unlabelled images are learnt from a teacher: give --teacher",
            )
        if config.data_on_device:
            raise ConfigError("--unlabelled images are read from files; drop --data-on-device")
        extra = UnlabelledImages(config.unlabelled, transforms_for(self.recipe.transforms, self.resolution, train=True))
        return ConcatDataset([train_set, extra]) if config.with_labelled else extra

    def _recorded(self) -> dict[str, Any]:
        return {"teacher": self.distillation.teacher.identity if self.distillation is not None else None}

    def _loaders(self, train_set, val_set):
        if not self.config.data_on_device:
            return super()._loaders(train_set, val_set)
        config, dist = self.config, self.dist
        if self.recipe.transforms != "cifar":
            raise ConfigError("--data-on-device keeps CIFAR-sized data on the device; use a cifar recipe")
        # (the loader seeds each image's augmentation itself: no SeededDataset)
        sampler = ResumableSampler(train_set, rank=dist.rank, world_size=dist.world_size, seed=config.seed)
        common = dict(device=self.device, resolution=self.resolution, seed=config.seed)
        train_loader = DeviceResidentLoader(train_set, self.batch_size, sampler, augment=True, **common)
        return (
            None,
            sampler,
            train_loader,
            DeviceResidentLoader(val_set, self.batch_size, None, augment=False, **common),
        )

    def _to_device(self, batch) -> tuple[Any, Any, int]:
        images, labels = batch
        images = images.to(self.device, non_blocking=True)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.to(self.device, non_blocking=True), labels.numel()

    # -- the model -------------------------------------------------------------------
    def _create_model(self) -> tuple[nn.Module, list[str]]:
        config, recipe = self.config, self.recipe
        options: dict[str, Any] = {"resolution": self.resolution}
        if recipe.cifar_strides:
            options["cifar"] = True
        if config.activation:
            options["activation"] = config.activation
        if not config.linear_bottleneck:
            options["linear_bottleneck"] = False
        if not config.residual:
            options["residual"] = False
        model = create_model(config.model, num_classes=len(self.classes), width_mult=config.width_mult, **options)
        head = head_parameter_names(model, required=recipe.body_lr_mult != 1 or recipe.freeze_body_epochs > 0)
        if config.init_from:
            renamed = renamed_classes(read_weights_file(config.init_from)[2], self.classes, config.init_from)
            model, loaded, fresh = load_pretrained(model, config.init_from, head=head, new_classes=bool(renamed))
            self.new_head = bool(fresh)
            self.log(
                f"started from {config.init_from}: {len(loaded)} tensors loaded"
                + (f"; new for {len(self.classes)} classes: {', '.join(fresh)}" if fresh else "")
                + (f" ({renamed})" if renamed and fresh else "")
            )
        return model, head

    def _transform_model(self, model: nn.Module, train_set) -> nn.Module:
        return self._prepare_qat(model, train_set) if self.config.qat else model

    def _prepare_qat(self, model: nn.Module, train_set) -> nn.Module:
        """Quantization-aware copy of the --init-from model, ranges set on training images.

        Every process computes the same thing (the images are a fixed, evenly spread
        slice with seeded augmentation), so no broadcast is needed.
        """
        from ..export.qat import apply_qat_structure, prepare_qat

        if not self.config.init_from:
            raise ConfigError("--qat fine-tunes a trained model: give it with --init-from CHECKPOINT")
        if self.config.data_on_device:
            raise ConfigError("--qat reads its calibration images from the dataset; drop --data-on-device")
        if self.config.qat_calibration < 1:
            raise ConfigError(f"--qat-calibration must be at least 1 image, got {self.config.qat_calibration}")
        resumed = self.architecture_to_resume() or {}
        if "qat" in resumed:  # its weights and trained ranges load from the checkpoint next: no calibration
            self.log("resuming quantization-aware training: its structure from last.pt")
            return apply_qat_structure(model.eval(), resumed["qat"]).train()
        seeded = SeededDataset(train_set, self.config.seed)
        count = min(self.config.qat_calibration, len(seeded))
        images = torch.stack([seeded[int(i * len(seeded) / count)][0] for i in range(count)])
        self.log(f"preparing quantization-aware training: int8 ranges from {count} training images")
        return prepare_qat(model.eval(), images).train()

    def _deployed(self, model: nn.Module) -> nn.Module:
        if not self.config.qat:
            return model
        from ..export.qat import convert_qat

        # Cost and latency of what is deployed (the float graph the int8 export is made from),
        # not of the rounding simulation.
        return convert_qat(model)[0]

    # -- a batch's loss, the evaluation ----------------------------------------------
    def _loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.net(images)
        if self.distillation is None:  # the plain path, as before distillation existed
            return F.cross_entropy(logits, labels, label_smoothing=self.recipe.label_smoothing)
        return self.distillation(logits, images, labels)

    def _evaluate(self, model: nn.Module) -> dict[str, Any]:
        return evaluate(
            model,
            self.val_loader,
            len(self.classes),
            self.device,
            dist=self.dist,
            channels_last=self.config.channels_last,
            precision=self.config.precision,
            flip=self.config.test_flip,
        )

    def _metrics_text(self, record: dict[str, Any]) -> str:
        return f"val top-1 {100 * record['top1']:.2f}%, top-5 {100 * record['top5']:.2f}%"
