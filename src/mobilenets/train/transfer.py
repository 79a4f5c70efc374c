"""Transfer learning: start from pretrained weights, learn from a teacher.

* :func:`head_parameter_names` splits a network into its pretrained body and its
  classifier head (the part that is replaced for a new set of classes and trained
  at the full learning rate while the body moves slowly, or not at all).
* :class:`Teacher` runs a trained network in eval mode, without gradients, on the
  student's augmented batch, resized and re-normalised to what the teacher expects.
* :func:`distillation_loss` is Hinton et al.'s (2015):
  ``(1 - w) * CE(student, labels) + w * T^2 * KL(teacher_T || student_T)`` per
  labelled image, and the teacher term alone for images without labels.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data import STYLES, image_files, load_rgb
from ..errors import ConfigError, DataError

__all__ = ["UNLABELLED", "Teacher", "UnlabelledImages", "distillation_loss", "file_sha256", "head_parameter_names"]

UNLABELLED = -1  # the label of an image without one


def head_parameter_names(model: nn.Module, *, required: bool = True) -> list[str]:
    """Names of the classifier head's parameters: those of the layer the model's
    ``get_classifier()`` names (ours, timm's), else the network's last fully connected layer
    (torchvision's ``fc``, ``classifier.6``, ``heads.head``...).  A network without one has no
    head to split off: an error if ``required``, else no names."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        prefix = next(name for name, m in model.named_modules() if m is head) + "."
        return [name for name, _ in model.named_parameters() if name.startswith(prefix)]
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears and not required:
        return []
    if not linears:
        raise ConfigError(
            f"{type(model).__name__} has no fully connected classifier to tell its head from its body; "
            "fine-tune it without a separate body learning rate or frozen body",
            cli=f"{type(model).__name__} has no fully connected classifier to tell its head from its body; "
            "drop --freeze-body-epochs and use --body-lr-mult 1",
        )
    prefix = linears[-1] + "."
    return [name for name, _ in model.named_parameters() if name.startswith(prefix)]


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
