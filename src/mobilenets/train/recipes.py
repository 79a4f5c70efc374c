"""Named training recipes: the papers' settings, printable and overridable.

Values come from the papers (see ``../shared/reference/papers.md``) and, for CIFAR,
from the reviewed MobileNetV2 CIFAR-10 experiment / pytorch-cifar.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import ConfigError

__all__ = ["RECIPES", "SCHEDULES", "Recipe", "get_recipe"]

# How the learning rate falls after the warm-up (see mobilenets.train.lr_factor).
SCHEDULES = ("cosine", "onecycle", "exponential", "poly")


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    optimizer: str  # "sgd", "rmsprop" or "adamw"
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    epochs: int
    schedule: str  # one of SCHEDULES: cosine; onecycle (linear up, then linear down); exponential; poly
    lr_decay: float = 1.0  # per-epoch factor for "exponential"
    # the schedule reaches its end here (None: at the last epoch); see lr_factor for what follows
    decay_epochs: int | None = None
    rmsprop_decay: float = 0.9  # RMSprop's squared-gradient averaging (TF "decay")
    rmsprop_eps: float = 1.0  # TF-slim's RMSprop epsilon; 1.0 is the reference setting
    label_smoothing: float = 0.0
    warmup_epochs: float = 0.0  # linear ramp from ~0 to lr, per step
    # ... over at least this many steps (at most half the run): a short run's warm-up is measured
    # in steps, not epochs - a 31-step fine-tune with a 3-step warm-up wrecks the frozen-statistics body
    warmup_steps: int = 0
    ema_decay: float = 0.0  # exponential moving average of weights (0: off); evaluated and saved
    transforms: str = "imagenet"  # "cifar" or "imagenet"; "ssd"/"ssdlite" (detection), "segmentation"
    cifar_strides: bool = False  # build the 32x32 variant of the model
    resolution: int | None = None  # input side (None: 32 for CIFAR-style data, else 224)
    # fine-tuning a pretrained network: the body learns at body_lr_mult x lr (the head at lr),
    # and is frozen (weights and batch-norm statistics) for its first freeze_body_epochs
    body_lr_mult: float = 1.0
    freeze_body_epochs: int = 0
    # fit a newly initialised classifier to the pretrained body's features before training
    # (mobilenets.train.transfer.fit_new_head)
    fit_head: bool = False
    # the pretrained body's batch norms keep their statistics (eval mode) throughout
    freeze_bn: bool = False
    # before each evaluation, re-estimate the training batch norms' running statistics on this
    # many training images with the current weights (mobilenets.train.batchnorm; 0: the moving averages)
    recompute_bn: int = 0
    # detectors: a default box is a positive for an object it overlaps by at least this IoU
    match_iou: float = 0.5
    # detectors: an object matching fewer boxes takes its best this many above IoU 0.1 (S3FD; 0: off)
    match_min_boxes: int = 0

    def override(self, **changes: Any) -> Recipe:
        unknown = set(changes) - set(asdict(self))
        if unknown:
            raise ConfigError(f"recipe {self.name} has no setting(s) {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def describe(self) -> str:
        return "\n".join(f"  {k:16s} {v}" for k, v in asdict(self).items())


COCO_SSDLITE = Recipe(
    "coco-ssdlite",
    "SSDLite detectors from an ImageNet backbone (--init-from) on a small detection set: AdamW 1e-3, "
    "warm-up, cosine, batch 16, IoU crop + flip",
    optimizer="adamw",
    lr=1e-3,
    momentum=0.9,
    weight_decay=4e-5,
    batch_size=16,
    epochs=30,
    schedule="cosine",
    warmup_epochs=1.0,
    transforms="ssdlite",
    recompute_bn=256,  # SSD's momentum 0.03 lags a few hundred steps (docs/benchmarks.md, "One class")
    # S3FD's threshold: small objects, which few default boxes overlap by 0.5, get more positives
    # (coco128's people at 512x512: 26.7 against 19.5 mAP50; docs/benchmarks.md, "One class")
    match_iou=0.35,
)

# Mobile DeepLabv3 / LR-ASPP from an ImageNet backbone (torchvision's segmentation references:
# SGD 0.02, momentum 0.9, wd 1e-4, poly decay, auxiliary loss where the model has one).
SEGMENTATION = Recipe(
    "seg-voc",
    "segmentation on Pascal VOC-sized sets (torchvision's references): SGD 0.02, momentum 0.9, wd 1e-4, poly "
    "decay, batch 32, 30 epochs; random scale 0.5-2x, crop, flip",
    optimizer="sgd",
    lr=0.02,
    momentum=0.9,
    weight_decay=1e-4,
    batch_size=32,
    epochs=30,
    schedule="poly",
    warmup_epochs=1.0,
    transforms="segmentation",
    recompute_bn=256,  # V3's momentum 0.01 lags for hundreds of steps (docs/benchmarks.md, "LR-ASPP V3-Large")
)

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            "cifar10",
            "CIFAR-10/100: SGD 0.1, momentum 0.9, wd 5e-4, cosine, batch 128 (pytorch-cifar; 94.43% at 200 epochs)",
            optimizer="sgd",
            lr=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            batch_size=128,
            epochs=200,
            schedule="cosine",
            transforms="cifar",
            cifar_strides=True,
        ),
        Recipe(
            "cifar10-qat",
            "quantization-aware fine-tuning of a CIFAR model (--qat --init-from): SGD 0.002, cosine, 2 epochs, batch 64",
            optimizer="sgd",
            lr=0.002,
            momentum=0.9,
            weight_decay=5e-5,
            batch_size=64,
            epochs=2,
            schedule="cosine",
            transforms="cifar",
            cifar_strides=True,
        ),
        Recipe(
            "imagenet-qat",
            "quantization-aware fine-tuning of an ImageNet-style model (--qat --init-from): SGD 0.001, cosine, 3 epochs",
            optimizer="sgd",
            lr=0.001,
            momentum=0.9,
            weight_decay=4e-5,
            batch_size=256,
            epochs=3,
            schedule="cosine",
            transforms="imagenet",
        ),
        Recipe(
            "cifar10-quick",
            "a few CPU minutes on a CIFAR slice: the cifar10 recipe with a 1-epoch warm-up, lr 0.05, batch 64",
            optimizer="sgd",
            lr=0.05,
            momentum=0.9,
            weight_decay=5e-4,
            batch_size=64,
            epochs=4,
            schedule="cosine",
            warmup_epochs=1.0,
            transforms="cifar",
            cifar_strides=True,
        ),
        Recipe(
            "finetune",
            "start from ImageNet weights (--init-from): AdamW 1e-3 head / 1e-4 body, the body's BN statistics held, "
            "head fitted first, warm-up, cosine, 96x96, "
            "ImageNet statistics",
            optimizer="adamw",
            lr=1e-3,
            momentum=0.9,
            weight_decay=0.01,
            batch_size=32,
            epochs=2,
            schedule="cosine",
            warmup_epochs=0.1,
            label_smoothing=0.1,
            transforms="imagenet-small",
            resolution=96,
            # a few hundred images (docs/benchmarks.md, "A thousand images, one epoch"): the body at a
            # tenth of the head's rate with its ImageNet statistics held, the new classifier fitted
            # before the body moves, a warm-up of at least 50 steps (1,000 CIFAR-10 images, 3 seeds:
            # 67 % against 63.5 % with the body at 0.3x; 30,000 images want 0.3x: the README's command)
            body_lr_mult=0.1,
            freeze_bn=True,
            fit_head=True,
            warmup_steps=50,
        ),
        COCO_SSDLITE,
        replace(
            COCO_SSDLITE,
            name="coco-ssd",
            description="SSD300 detectors (ssd_mobilenet_v1): coco-ssdlite with SSD's augmentation (photometric, "
            "zoom-out, IoU crop, flip)",
            transforms="ssd",
        ),
        SEGMENTATION,
        # torchvision's reference settings at batch 8 (lr scaled linearly): on coco128's people they beat
        # AdamW 1e-3 + cosine by 4.4 points of person IoU at equal time (docs/benchmarks.md, "One class")
        replace(
            SEGMENTATION,
            name="seg-small",
            description="segmentation on a few hundred images from an ImageNet backbone (coco128's masks): "
            "seg-voc's SGD at batch 8 (lr 0.005), poly decay, warm-up, 40 epochs",
            lr=0.005,
            batch_size=8,
            epochs=40,
        ),
        Recipe(
            "imagenet-v1",
            "MobileNetV1 paper: RMSprop, little weight decay",
            optimizer="rmsprop",
            lr=0.045,
            momentum=0.9,
            weight_decay=4e-5,
            batch_size=96,
            epochs=150,
            schedule="exponential",
            lr_decay=0.98,
        ),
        Recipe(
            "imagenet-v2",
            "MobileNetV2 paper: RMSprop decay 0.9 momentum 0.9, lr 0.045 x0.98/epoch, wd 4e-5, batch 96",
            optimizer="rmsprop",
            lr=0.045,
            momentum=0.9,
            weight_decay=4e-5,
            batch_size=96,
            epochs=300,
            schedule="exponential",
            lr_decay=0.98,
            label_smoothing=0.1,
        ),
        Recipe(
            "imagenet-v3",
            "MobileNetV3 paper: RMSprop momentum 0.9, lr 0.1 (batch 4096), x0.01 every 3 epochs, wd 1e-5",
            optimizer="rmsprop",
            lr=0.1,
            momentum=0.9,
            weight_decay=1e-5,
            batch_size=4096,
            epochs=600,
            schedule="exponential",
            lr_decay=0.01 ** (1 / 3),  # 0.01 every 3 epochs, applied per epoch
            ema_decay=0.9999,
        ),
    ]
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}") from None
