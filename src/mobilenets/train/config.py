"""A training run's settings and what each may be.

Light on purpose (no torch): the command line builds its ``train`` options from
:data:`FIELD_RULES`, so ``--epochs 0`` is refused with the same words the Python
API uses, before anything is loaded or written.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import ConfigError
from ..validate import (
    FRACTION,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    PRECISIONS,
    PROBABILITY,
    UNIT_FRACTION,
    Rule,
    check_device,
    one_of,
)
from .recipes import RECIPES, SCHEDULES, Recipe, get_recipe

__all__ = ["COMPILE_MODES", "FIELD_RULES", "GROUPS", "RECIPE_OVERRIDES", "TrainConfig", "option"]

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
    "recompute_bn": NON_NEGATIVE_INT,
    "match_iou": UNIT_FRACTION,
    "match_min_boxes": NON_NEGATIVE_INT,
    "ema_decay": FRACTION,
    "width_mult": POSITIVE,
    "resolution": POSITIVE_INT,
    "qat_calibration": POSITIVE_INT,
    "train_subset": POSITIVE_INT,
    "val_subset": POSITIVE_INT,
    "workers": NON_NEGATIVE_INT,
    "seed": NON_NEGATIVE_INT,
    "checkpoint_every": NON_NEGATIVE_INT,
    "eval_every": POSITIVE_INT,
    "checkpoint_minutes": POSITIVE,
    "body_lr_mult": NON_NEGATIVE,
    "freeze_body_epochs": NON_NEGATIVE_INT,
    "freeze_layers": NON_NEGATIVE_INT,
    "background_every": POSITIVE_INT,
    "distill_weight": PROBABILITY,
    "temperature": POSITIVE,
}


# The settings that override the recipe's value of the same name when given (None: the recipe's).
RECIPE_OVERRIDES = (
    "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "schedule", "decay_epochs", "label_smoothing",
    "ema_decay", "body_lr_mult", "freeze_body_epochs", "fit_head", "recompute_bn", "freeze_bn", "match_iou",
    "match_min_boxes",
)  # fmt: skip

# Distillation's defaults (Hinton et al. 2015 use T in 1-20; w 0.5 weighs both losses alike).
DISTILL_WEIGHT, TEMPERATURE = 0.5, 4.0


def option(default: Any, help: str, group: str, **cli: Any) -> Any:
    """A :class:`TrainConfig` field and its ``mobilenets train`` option: the help text, the
    option group, and what argparse needs beyond the field's type and rule (``flag`` for
    another name, ``action``, ``choices``, ``metavar``).  Each default is written once, here.
    ``tasks`` names the tasks that take the option where not every task does: a trainer refuses
    it, set, for any other (``Trainer`` reads it)."""
    return field(default=default, metadata={"help": help, "group": group, **cli})


def option_flag(name: str) -> str:
    """The ``mobilenets train`` option of the :class:`TrainConfig` field ``name``."""
    meta = next(f.metadata for f in fields(TrainConfig) if f.name == name)
    return meta.get("flag") or "--" + name.replace("_", "-")


CLASSIFIER = ("classification",)  # an option only classifiers take (distillation, int8 training, ...)


# The option groups of `mobilenets train --help`, in order ("" is the ungrouped top).
GROUPS = ("", "data", "recipe overrides", "fine-tuning (start from pretrained weights)",
          "distillation (learn from a trained teacher, Hinton et al. 2015)", "quantization-aware training", "model",
          "speed and bookkeeping")  # fmt: skip
DATA, RECIPE, START, TEACH, QAT, MODEL, SPEED = GROUPS[1:]


@dataclass
class TrainConfig:
    model: str = option(None, "model name (see 'mobilenets models')", "")
    data_dir: str = option(None, "the images: a classifier's class folders (train/ + val/ or test/) or a CIFAR root; a "
                           "detector's YOLO (data.yaml) or COCO (annotations/instances_*.json) set; a segmenter's "
                           "image and mask folders named by a YAML, or a Pascal VOC tree", "")  # fmt: skip
    out: str = option(None, "run directory; an existing run there is resumed", "")
    recipe: str | None = option(
        None,
        "training recipe (default: the model's task's - cifar10 for classifiers, coco-ssdlite for detectors, "
        "seg-small for segmenters)",
        "",
        choices=sorted(RECIPES),
    )
    # recipe overrides (None: the recipe's value)
    epochs: int | None = option(None, "how many passes over the training images (the schedule's length)", RECIPE)
    batch_size: int | None = option(None, "global batch (split over torchrun processes)", RECIPE)
    lr: float | None = option(None, "peak learning rate", RECIPE)
    weight_decay: float | None = option(None, "L2 penalty on the weights (not on biases and BN)", RECIPE)
    warmup_epochs: float | None = option(None, "linear learning-rate warm-up", RECIPE)
    schedule: str | None = option(
        None,
        "how the rate falls after the warm-up: cosine; onecycle (a straight line to zero: with a warm-up, the "
        "one-cycle schedule of fast large-batch training); exponential (per epoch); poly (DeepLab's)",
        RECIPE,
        choices=SCHEDULES,
    )
    decay_epochs: int | None = option(
        None,
        "the schedule ends at epoch N (default: the last); past N, cosine turns back up as PyTorch's "
        "CosineAnnealingLR(T_max=N) does (the seed's '200 epochs, decayed until 150'), the others stay at zero",
        RECIPE,
        metavar="N",
    )
    label_smoothing: float | None = option(None, "in [0, 1)", RECIPE)
    recompute_bn: int | None = option(
        None,
        "before each evaluation, re-estimate the batch norms' running statistics on N training images with the "
        "current weights ('precise BN': the moving averages lag the weights by ~1/momentum steps, which short "
        "runs never outlast); 0: off (detection and segmentation recipes: 256)",
        RECIPE,
        metavar="N",
    )
    ema_decay: float | None = option(None, "EMA of weights (e.g. 0.9999); 0 turns it off", RECIPE)
    match_iou: float | None = option(
        None,
        "detectors: a default box learns an object it overlaps by IoU T or more (each object also keeps its best "
        "box). SSD's 0.5 leaves small objects one box each; coco-ssdlite/coco-ssd: 0.35, as S3FD (coco128's "
        "people: 26.7 against 19.5 mAP50)",
        RECIPE,
        metavar="T",
        tasks=("detection",),
    )
    match_min_boxes: int | None = option(
        None,
        "detectors: an object that matches fewer than N boxes at --match-iou takes its N best among those it "
        "overlaps by IoU 0.1 or more (S3FD's second step, for objects smaller than every default box; coco128's "
        "people at 6: 25.7 against 26.7 mAP50, within the spread); 0: off (every recipe)",
        RECIPE,
        metavar="N",
        tasks=("detection",),
    )
    body_lr_mult: float | None = option(
        None, "the pretrained body learns at this x --lr, the classifier at --lr (finetune recipe: 0.1)", START
    )
    freeze_body_epochs: int | None = option(
        None,
        "train only the classifier for the first N epochs (body weights and BN statistics held)",
        START,
        metavar="N",
    )
    fit_head: bool | None = option(
        None,
        "before training, fit the new classifier to the pretrained body's features (a linear probe on up to "
        "1,024 training images, one forward pass), so the first steps do not send a random head's noise into "
        "the body (finetune recipe: on)",
        START,
        action="optional",
    )
    # model
    width_mult: float = option(1.0, "width multiplier alpha (default 1.0)", MODEL)
    resolution: int | None = option(None, "input side (default 32 for CIFAR recipes, else 224)", MODEL)
    activation: str | None = option(
        None, "relu or relu6 inside the blocks (the V1/V2 ablation)", MODEL, tasks=CLASSIFIER
    )
    # the V2 paper's Figure 6 ablations (MobileNetV2 only): ReLU6 after the projection, no shortcuts
    linear_bottleneck: bool = option(
        True,
        "MobileNetV2 with ReLU6 after each projection (the V2 paper's Figure 6 ablation)",
        MODEL,
        flag="--nonlinear-bottleneck",
        tasks=CLASSIFIER,
    )
    residual: bool = option(
        True,
        "MobileNetV2 without shortcuts between bottlenecks (Figure 6)",
        MODEL,
        flag="--no-shortcuts",
        tasks=CLASSIFIER,
    )
    # start from trained weights (fine-tuning), optionally quantization-aware
    init_from: str | None = option(
        None,
        "start from these weights: torchvision's published file, a run's best.pt, saved or converted "
        "(decoupled) weights; a classifier for another number (or set) of classes is re-initialised",
        START,
        metavar="WEIGHTS",
    )
    qat: bool = option(
        False,
        "quantization-aware training: the model computes what its int8 ONNX export will (folded BN, int8 "
        "weights, uint8 activations with learned ranges); needs --init-from; use a -qat recipe",
        QAT,
        tasks=CLASSIFIER,
    )
    qat_calibration: int = option(256, "training images that set the initial int8 ranges (256)", QAT)
    freeze_bn: bool | None = option(
        None,
        "keep the pretrained body's batch-norm statistics throughout (new layers' batch norms still train); "
        "finetune recipe: on",
        START,
        action="optional",
    )
    # the body's first N layers (model.features[:N]) never train: weights and statistics held, and
    # no backward pass through them - the generic early filters a pretrained network keeps anyway
    freeze_layers: int = option(
        0,
        "never train the body's first N layers (features[:N]): no backward pass through them, so each "
        "step is cheaper (the README's fine-tuning command uses 2)",
        START,
        metavar="N",
    )
    # distillation (Hinton et al. 2015): learn from a trained teacher's softened outputs
    teacher: str | None = option(
        None,
        "a trained model's checkpoint or saved file (any architecture and width)",
        TEACH,
        metavar="WEIGHTS",
        tasks=CLASSIFIER,
    )
    teacher_model: str | None = option(
        None, "the teacher's architecture, for a file that records none", TEACH, metavar="NAME"
    )
    distill_weight: float = option(
        DISTILL_WEIGHT,
        f"with --teacher: loss = (1-W) CE + W T^2 KL(teacher || student) (default {DISTILL_WEIGHT:g})",
        TEACH,
        metavar="W",
    )
    temperature: float = option(
        TEMPERATURE, f"with --teacher: softening temperature (default {TEMPERATURE:g})", TEACH, metavar="T"
    )
    unlabelled: str | None = option(
        None,
        "train on these images without labels (any layout), from the teacher alone; --data-dir still validates",
        TEACH,
        metavar="DIR",
        tasks=CLASSIFIER,
    )
    with_labelled: bool = option(False, "with --unlabelled: also train on --data-dir's labelled images", TEACH)
    # data
    dataset: str | None = option(
        None,
        "use torchvision's CIFAR files in --data-dir",
        DATA,
        choices=("cifar10", "cifar100"),
        tasks=CLASSIFIER,
    )
    download: bool = option(False, "let torchvision download CIFAR into --data-dir", DATA)
    classes: str | None = option(
        None,
        "detectors and segmenters: keep only these classes of the dataset (names or its ids, comma-separated, "
        "e.g. person,car), renumbered; every other object is background. Recorded in the run, so eval applies it",
        DATA,
        metavar="A,B",
        tasks=("detection", "segmentation"),
    )
    skip_empty_images: bool = option(
        False,
        "detectors: train only on the images holding an object (of the kept classes). SSD's loss mines 3 "
        "background boxes per object in the same image, so an image without objects adds no loss, only time: "
        "the same steps take half the time on coco128's people (raise --epochs to keep the steps); "
        "--background-every K keeps some and teaches background from them",
        DATA,
        tasks=("detection",),
    )
    background_every: int | None = option(
        None,
        "detectors: train on the images holding an object and every Kth of the others (YOLO's background "
        "images; 1: all), each of those teaching its hardest default boxes as background, as many as the batch's "
        "images with objects do on average (SSD's loss mines only beside objects). coco128's people, K = 2: mAP50 "
        "27.9 against 25.2 as trained over three seeds, 31.0 against 29.2 with --test-tiles --test-flip",
        DATA,
        metavar="K",
        tasks=("detection",),
    )
    train_subset: int | None = option(None, "train on a fixed class-balanced slice of N images", DATA)
    val_subset: int | None = option(None, "validate on a fixed class-balanced slice of N images", DATA)
    workers: int | None = option(
        None,
        "data-loading processes per training process (default: none on the CPU, where they only take cores from "
        "the training: a detector's epochs ran 2-3x faster without them on 2 cores; 2 on a GPU)",
        DATA,
    )
    data_on_device: bool = option(
        False, "keep a CIFAR-sized dataset on the device, augment it there", DATA, tasks=CLASSIFIER
    )
    seed: int = option(0, "seeds weights, data order, augmentation, dropout", DATA)
    # speed
    device: str | None = option(None, "cpu, cuda or cuda:N (default: cuda where a GPU is visible, else cpu)", SPEED)
    precision: str = option("fp32", "autocast precision", SPEED, choices=PRECISIONS)
    channels_last: bool | None = option(
        None,
        "NHWC memory format: 1.1-1.4x faster training on CPUs, where it is the default; "
        "opt-in on GPUs (not measured there)",
        SPEED,
        action="optional",
    )
    compile: bool = option(False, "torch.compile the model", SPEED)
    compile_mode: str | None = option(
        None,
        "torch.compile's mode (implies --compile): reduce-overhead replays each training step as a CUDA graph, "
        "which pays off for small models whose steps are launch-bound",
        SPEED,
        choices=COMPILE_MODES,
    )
    # validation on each image and its mirror image (test-time flip, 2x the cost)
    test_flip: bool = option(
        False,
        "validate on each image and its mirror image (test-time flip: twice the evaluation cost): a classifier's "
        "logits averaged (+1.1 points for torchvision's MobileNetV2 on the 1,000 shared ImageNet images), a "
        "segmenter's class scores averaged, a detector's boxes of both passes suppressed together",
        RECIPE,
    )
    # bookkeeping
    eval_every: int = option(
        1,
        "validate after every Nth epoch and after the last (default 1); best.pt is the best validated epoch. "
        "On a few hundred images a validation pass can cost as much as the epoch it scores",
        SPEED,
        metavar="N",
    )
    checkpoint_every: int = option(0, "also save last.pt every N steps (0: time-based only)", SPEED)
    checkpoint_minutes: float = option(10.0, "save last.pt at least this often", SPEED)
    tensorboard: bool = option(False, "write TensorBoard logs to OUT/tensorboard", SPEED)

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` naming the first setting that cannot work."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in FIELD_RULES and value is not None:
                FIELD_RULES[f.name].check(value, f.name)
        for name in ("model", "data_dir", "out"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is required", cli=f"train needs --{name.replace('_', '-')}")
        if self.recipe is not None:  # None: the trainer's task's own (Trainer.default_recipe)
            one_of(self.recipe, "recipe", list(RECIPES))
        one_of(self.precision, "precision", PRECISIONS)
        if self.schedule is not None:
            one_of(self.schedule, "schedule", SCHEDULES)
        if self.compile_mode is not None:
            one_of(self.compile_mode, "compile_mode", COMPILE_MODES)
        if self.dataset is not None:
            one_of(self.dataset, "dataset", ("cifar10", "cifar100"))
        if self.device is not None:  # None: cuda where a GPU is visible, else cpu (train() decides)
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
        if self.skip_empty_images and self.background_every:
            raise ConfigError(
                "skip_empty_images drops every image without objects, background_every keeps some: give one",
                cli="--skip-empty-images drops every image without objects, --background-every keeps some: give one",
            )
        return self

    def resolved_recipe(self) -> Recipe:
        """The recipe with the settings given here overriding its values (the trainer names the
        task's own recipe first when none is given)."""
        return get_recipe(self.recipe).override(**{name: getattr(self, name) for name in RECIPE_OVERRIDES})
