"""A training run's settings and what each may be.

Light on purpose (no torch): the command line builds its ``train`` options from
:data:`FIELD_RULES`, so ``--epochs 0`` is refused with the same words the Python
API uses, before anything is loaded or written.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import ConfigError
from ..validate import (
    FRACTION,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    PRECISIONS,
    PROBABILITY,
    Rule,
    check_device,
    one_of,
)
from .recipes import RECIPES, SCHEDULES, Recipe, get_recipe

__all__ = ["COMPILE_MODES", "FIELD_RULES", "TrainConfig"]

# torch.compile's modes: "reduce-overhead" and "max-autotune" replay CUDA graphs on a GPU
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# What each numeric setting must be when given (None means "the recipe's value").
FIELD_RULES: dict[str, Rule] = {
    "epochs": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "lr": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "warmup_epochs": NON_NEGATIVE,
    "decay_epochs": POSITIVE_INT,
    "label_smoothing": FRACTION,
    "ema_decay": FRACTION,
    "width_mult": POSITIVE,
    "resolution": POSITIVE_INT,
    "qat_calibration": POSITIVE_INT,
    "train_subset": POSITIVE_INT,
    "val_subset": POSITIVE_INT,
    "workers": NON_NEGATIVE_INT,
    "seed": NON_NEGATIVE_INT,
    "checkpoint_every": NON_NEGATIVE_INT,
    "checkpoint_minutes": POSITIVE,
    "body_lr_mult": NON_NEGATIVE,
    "freeze_body_epochs": NON_NEGATIVE_INT,
    "freeze_layers": NON_NEGATIVE_INT,
    "distill_weight": PROBABILITY,
    "temperature": POSITIVE,
}


# Distillation's defaults (Hinton et al. 2015 use T in 1-20; w 0.5 weighs both losses alike).
DISTILL_WEIGHT, TEMPERATURE = 0.5, 4.0


@dataclass
class TrainConfig:
    model: str
    data_dir: str
    out: str
    recipe: str = "cifar10"
    # recipe overrides (None: the recipe's value)
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    schedule: str | None = None
    decay_epochs: int | None = None
    label_smoothing: float | None = None
    ema_decay: float | None = None
    body_lr_mult: float | None = None
    freeze_body_epochs: int | None = None
    # model
    width_mult: float = 1.0
    resolution: int | None = None
    activation: str | None = None
    # the V2 paper's Figure 6 ablations (MobileNetV2 only): ReLU6 after the projection, no shortcuts
    linear_bottleneck: bool = True
    residual: bool = True
    # start from trained weights (fine-tuning), optionally quantization-aware
    init_from: str | None = None
    qat: bool = False
    qat_calibration: int = 256  # training images whose activations set the initial int8 ranges
    freeze_bn: bool = False  # keep every batch norm's statistics (e.g. the pretrained ones)
    # the body's first N layers (model.features[:N]) never train: weights and statistics held, and
    # no backward pass through them - the generic early filters a pretrained network keeps anyway
    freeze_layers: int = 0
    # distillation (Hinton et al. 2015): learn from a trained teacher's softened outputs
    teacher: str | None = None  # a checkpoint or saved model (or a state dict with teacher_model)
    teacher_model: str | None = None  # the registry name of a teacher file that records no architecture
    distill_weight: float = DISTILL_WEIGHT  # w: loss = (1 - w) CE + w T^2 KL
    temperature: float = TEMPERATURE  # T
    unlabelled: str | None = None  # a folder of images without labels, learnt from the teacher alone
    with_labelled: bool = False  # with unlabelled: also train on the labelled images of data_dir
    # data
    dataset: str | None = None
    download: bool = False
    train_subset: int | None = None
    val_subset: int | None = None
    workers: int = 0
    data_on_device: bool = False
    seed: int = 0
    # speed
    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool | None = None  # NHWC memory format; None: on for CPU training, where it is faster
    compile: bool = False
    # torch.compile's mode; "reduce-overhead" replays each step as a CUDA graph (implies compile)
    compile_mode: str | None = None
    # validation: average each image's logits with its mirror image's (test-time flip, 2x the cost)
    test_flip: bool = False
    # bookkeeping
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: time-based only)
    checkpoint_minutes: float = 10.0
    tensorboard: bool = False

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` naming the first setting that cannot work."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in FIELD_RULES and value is not None:
                FIELD_RULES[f.name].check(value, f.name)
        for name in ("model", "data_dir", "out"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is required", cli=f"train needs --{name.replace('_', '-')}")
        one_of(self.recipe, "recipe", list(RECIPES))
        one_of(self.precision, "precision", PRECISIONS)
        if self.schedule is not None:
            one_of(self.schedule, "schedule", SCHEDULES)
        if self.compile_mode is not None:
            one_of(self.compile_mode, "compile_mode", COMPILE_MODES)
        if self.dataset is not None:
            one_of(self.dataset, "dataset", ("cifar10", "cifar100"))
        check_device(self.device)
        if self.teacher_model and not self.teacher:
            raise ConfigError(
                "teacher_model names the network of a teacher file: give teacher=",
                cli="--teacher-model needs --teacher",
            )
        if not self.teacher and (self.distill_weight != DISTILL_WEIGHT or self.temperature != TEMPERATURE):
            raise ConfigError(
                "distill_weight and temperature shape the distillation loss: give teacher=",
                cli="--distill-weight and --temperature shape the distillation loss: they need --teacher",
            )
        if self.with_labelled and not self.unlabelled:
            raise ConfigError(
                "with_labelled mixes labelled images into unlabelled=", cli="--with-labelled needs --unlabelled"
            )
        return self

    def resolved_recipe(self) -> Recipe:
        return get_recipe(self.recipe).override(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            warmup_epochs=self.warmup_epochs,
            schedule=self.schedule,
            decay_epochs=self.decay_epochs,
            label_smoothing=self.label_smoothing,
            ema_decay=self.ema_decay,
            body_lr_mult=self.body_lr_mult,
            freeze_body_epochs=self.freeze_body_epochs,
        )
