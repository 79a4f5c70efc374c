"""Transfer learning: start from pretrained weights, learn from a teacher.

* :func:`head_parameter_names` splits a network into its pretrained body and its
  classifier head (the part that is replaced for a new set of classes and trained
  at the full learning rate while the body moves slowly, or not at all).
* :func:`fit_new_head` fits a newly initialised classifier on the pretrained body's
  features before the body moves (the first step of LP-FT).
* :class:`Teacher` runs a trained network in eval mode, without gradients, on the
  student's augmented batch, resized and re-normalised to what the teacher expects.
* :func:`distillation_loss` is Hinton et al.'s (2015):
  ``(1 - w) * CE(student, labels) + w * T^2 * KL(teacher_T || student_T)`` per
  labelled image, and the teacher term alone for images without labels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data import STYLES, image_files, load_rgb
from ..errors import ConfigError, DataError

__all__ = [
    "UNLABELLED", "Distillation", "Teacher", "UnlabelledImages", "distillation_loss", "file_sha256", "fit_new_head",
    "head_parameter_names",
]  # fmt: skip

UNLABELLED = -1  # the label of an image without one


def _last_linear(model: nn.Module) -> nn.Linear | None:
    """The layer the model's ``get_classifier()`` names (ours, timm's), else its last fully
    connected layer (torchvision's ``fc``, ``classifier.6``, ``heads.head``...); None without one."""
    if hasattr(model, "get_classifier"):
        return model.get_classifier()
    return next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)


def head_parameter_names(model: nn.Module, *, required: bool = True) -> list[str]:
    """Names of the classifier head's parameters: those of the model's last fully connected layer
    (``_last_linear``).  A network without one has no head to split off: an error if
    ``required``, else no names."""
    head = _last_linear(model)
    if head is None and not required:
        return []
    if head is None:
        raise ConfigError(
            f"{type(model).__name__} has no fully connected classifier to tell its head from its body; "
            "fine-tune it without a separate body learning rate or frozen body",
            cli=f"{type(model).__name__} has no fully connected classifier to tell its head from its body; "
            "drop --freeze-body-epochs and use --body-lr-mult 1",
        )
    prefix = next(name for name, m in model.named_modules() if m is head) + "."
    return [name for name, _ in model.named_parameters() if name.startswith(prefix)]


@torch.no_grad()
def _head_inputs(
    model: nn.Module, layer: nn.Linear, batches, limit: int, batch_statistics: Collection[str] | None
) -> tuple[Tensor, Tensor]:
    """What ``layer`` receives for up to ``limit`` labelled images: dropout off, the batch norms
    named in ``batch_statistics`` (None: all) on each batch's statistics, the others on their
    running ones - as training will run them. Every buffer is left as it was."""
    captured: list[Tensor] = []
    hook = layer.register_forward_hook(lambda _m, args, _out: captured.append(args[0].float()))
    labels: list[Tensor] = []
    was_training = model.training
    norms = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    kept = [{k: v.clone() for k, v in m.state_dict().items()} for _, m in norms]
    model.eval()
    for name, module in norms:
        module.train(batch_statistics is None or name in batch_statistics)
    try:
        seen = 0
        for images, targets in batches:
            model(images)
            labels.append(targets)
            seen += len(targets)
            if seen >= limit:
                break
    finally:
        hook.remove()
        for (_, module), state in zip(norms, kept):  # the body leaves exactly as it came
            module.load_state_dict(state)
        model.train(was_training)
    features, labels_ = torch.cat(captured)[:limit], torch.cat(labels)[:limit]
    keep = labels_ != UNLABELLED
    return features[keep], labels_[keep]


def fit_new_head(
    model: nn.Module,
    batches,
    *,
    limit: int = 1024,
    label_smoothing: float = 0.0,
    l2: float = 1e-1,
    iterations: int = 50,
    batch_statistics: Collection[str] | None = None,
) -> tuple[int, float]:
    """Fit ``model``'s last fully connected layer to the pretrained body's features before
    fine-tuning moves the body: L2-regularised logistic regression (L-BFGS, full batch) on the
    features of up to ``limit`` training images from ``batches``, computed as training will
    compute them (``batch_statistics``: the batch norms that train; see ``_head_inputs``).

    A freshly initialised classifier sends noise back into the pretrained body in the first
    steps, and with few steps the body does not recover (Kumar et al. 2022, "Fine-Tuning can
    Distort Pretrained Features": linear probe, then fine-tune). Measured here: one epoch of the
    ``finetune`` recipe on 1,000 CIFAR-10 images, 500 test images, AMD EPYC Zen 5, seeds 0-2:
    docs/benchmarks.md, "Fine-tuning on a thousand images". Costs one forward pass over
    ``limit`` images. Returns (images used, their top-1 under the fitted layer)."""
    layer = _last_linear(model)
    if layer is None:
        raise ConfigError(f"{type(model).__name__} has no fully connected classifier to fit")
    features, labels = _head_inputs(model, layer, batches, limit, batch_statistics)
    if not len(labels):
        return 0, 0.0
    weight = layer.weight.detach().float().clone().requires_grad_(True)
    bias = layer.bias.detach().float().clone().requires_grad_(True) if layer.bias is not None else None
    params = [weight] + ([bias] if bias is not None else [])
    optimizer = torch.optim.LBFGS(params, lr=1, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        logits = F.linear(features, weight, bias)
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
        accuracy = (F.linear(features, weight, bias).argmax(1) == labels).float().mean().item()
    return len(labels), accuracy


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Teacher(nn.Module):
    """A trained classifier that teaches: eval mode, no gradients, its own input size and normalisation.

    ``path``: any file :func:`mobilenets.load_model` reads (a run's checkpoint, a saved
    model), or, with ``model_name``, a plain state dict of that registry model
    (torchvision's published files included).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        model_name: str | None,
        num_classes: int,
        student_style: str,
        student_classes: list[str] | None = None,
    ):
        super().__init__()
        from ..models import create_model, load_model_with_info
        from ..predict import check_classes, default_data_info
        from ..weights import load_pretrained, read_weights_file

        if not Path(path).is_file():
            raise ConfigError(f"teacher file not found: {path}", cli=f"--teacher file not found: {path}")
        if model_name:
            network = create_model(model_name, num_classes=num_classes)
            network, _, fresh = load_pretrained(network, path, head=head_parameter_names(network, required=False))
            if fresh:  # the file's classifier is for another number of classes (the last matrix in the file)
                state = read_weights_file(path)[0]
                theirs = [v.shape[0] for v in state.values() if v.dim() == 2][-1]
                raise ConfigError(
                    f"the teacher {path} has {theirs} classes but the student has {num_classes}",
                    cli=f"--teacher {path} has {theirs} classes but the student has {num_classes}",
                )
            info: dict[str, Any] = {}
        elif "name" in read_weights_file(path)[1]:
            network, info = load_model_with_info(path)
        else:
            raise ConfigError(
                f"{path} records no architecture; say which network it holds with teacher_model=",
                cli=f"--teacher {path} records no architecture; say which network it holds with --teacher-model NAME",
            )
        info = default_data_info(network, info)
        classes = network.arch.get("num_classes") if getattr(network, "arch", None) else None
        if classes != num_classes:
            raise ConfigError(
                f"the teacher {path} has {classes} classes but the student has {num_classes}",
                cli=f"--teacher {path} has {classes} classes but the student has {num_classes}",
            )
        if student_classes is not None:  # the same classes, not only as many
            check_classes(info, student_classes, model=f"the teacher {path}", data="the student's data")
        self.network = network.eval().requires_grad_(False)
        self.resolution = int(info["resolution"])
        student, own = STYLES[student_style], STYLES[info["transforms"]]
        # x_teacher = ((x * std_s + mean_s) - mean_t) / std_t, folded into one scale and shift
        scale = torch.tensor(student.std) / torch.tensor(own.std)
        shift = (torch.tensor(student.mean) - torch.tensor(own.mean)) / torch.tensor(own.std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)
        self.identity = {"path": str(path), "sha256": file_sha256(path), "model": model_name}

    def train(self, mode: bool = True) -> Teacher:  # a teacher never leaves eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = images * self.scale + self.shift
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True)
        return self.network(x).float()


def distillation_loss(
    student: Tensor,
    teacher: Tensor | None,
    labels: Tensor,
    *,
    weight: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Mean over the batch of ``(1 - w) CE + w T^2 KL(teacher_T || student_T)`` for labelled
    images and ``T^2 KL`` alone for unlabelled ones (label :data:`UNLABELLED`); plain
    cross-entropy without a teacher."""
    student = student.float()
    labelled = labels != UNLABELLED
    ce = torch.zeros_like(student[:, 0])
    if labelled.any():
        ce[labelled] = F.cross_entropy(
            student[labelled], labels[labelled], label_smoothing=label_smoothing, reduction="none"
        )
    if teacher is None:
        if not labelled.all():
            raise ConfigError("images without labels can only be learnt from a teacher")
        return ce.mean()
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), log_target=True, reduction="none"
    )
    soft = t * t * kl.sum(dim=1)
    per_image = torch.where(labelled, (1 - weight) * ce + weight * soft, soft)
    return per_image.mean()


class Distillation:
    """A classifier's loss with a teacher: :func:`distillation_loss` of the student's logits
    against the teacher's on the same images (the wrapping loss a trainer composes in)."""

    def __init__(self, teacher: Teacher, *, weight: float, temperature: float, label_smoothing: float = 0.0):
        self.teacher, self.weight, self.temperature = teacher, weight, temperature
        self.label_smoothing = label_smoothing

    def __call__(self, logits: Tensor, images: Tensor, labels: Tensor) -> Tensor:
        return distillation_loss(logits, self.teacher(images), labels, weight=self.weight,
                                 temperature=self.temperature, label_smoothing=self.label_smoothing)  # fmt: skip


class UnlabelledImages(Dataset):
    """Every image file under a folder (any layout), with the label :data:`UNLABELLED`."""

    def __init__(self, folder: str | Path, transform):
        self.files = image_files(folder)
        if not self.files:
            raise DataError(f"{folder} holds no images to learn from", cli=f"--unlabelled {folder} holds no images")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        return self.transform(load_rgb(str(self.files[index]))), UNLABELLED
