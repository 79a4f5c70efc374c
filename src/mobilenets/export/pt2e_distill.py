"""PT2E int8 fitted to its own float network before conversion (``export --format litert --int8
--distill-steps N``): quantization-aware fine-tuning in which the float network is the teacher.

Post-training int8 rounds every weight to its nearest step and leaves the later layers to amplify
the rounding - on MobileNetV2 in LiteRT's XNNPACK kernels on AVX-512 CPUs most (docs/benchmarks.md,
"Why LiteRT int8 scores differently from host to host"). Here the network is prepared with fake
quantization instead of observers, its activation ranges set on the calibration images as PT2E's
post-training path sets them and then held, and its weights trained for ``steps`` batches to
give the float network's outputs on those same images, randomly cropped and flipped (the KL
divergence of the softmaxes: knowledge distillation, Hinton et al. 2015). No labels are needed,
and the graph - hence the file's speed - is the post-training one.

Measured (docs/benchmarks.md, "LiteRT int8 fitted to fp32"): torchvision's MobileNetV2, LiteRT's
XNNPACK on an AMD EPYC Zen 4 (AVX-512 VNNI), 200 COCO calibration photos, imagenet-sample's 1,000
images: ``export --format litert --int8 --distill-steps 300`` scored 83.53 % against fp32's 83.80 %,
where the post-training file scores 82.37 %; 9.5 minutes for the whole command on 2 cores.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .onnx import fold_batchnorm

__all__ = ["DISTILL_LR", "distilled_int8", "fake_quantized"]

# Adam's rate, cosine-decayed to 0 over the steps: the rate of the runs in docs/benchmarks.md. It is
# kept small because a weight need move only a fraction of its int8 step; in scratch runs (not kept)
# higher rates drove the simulated KL up instead of down.
DISTILL_LR = 2e-5
BATCH_SIZE = 16


def fake_quantized(config: Any) -> Any:
    """A PT2E ``QuantizationConfig`` whose weight and activation observers sit inside
    ``FakeQuantize`` modules (for ``prepare_qat_pt2e``), observing as they did."""
    from torchao.quantization.pt2e import FakeQuantize

    def wrapped(spec):
        if spec is None:
            return None
        return dataclasses.replace(spec, observer_or_fake_quant_ctr=FakeQuantize.with_args(
            observer=spec.observer_or_fake_quant_ctr))  # fmt: skip

    return dataclasses.replace(
        config,
        input_activation=wrapped(config.input_activation),
        output_activation=wrapped(config.output_activation),
        weight=wrapped(config.weight),
    )


def _kl(student: Tensor, teacher: Tensor) -> Tensor:
    """KL(teacher || student) of the softmaxes, per image."""
    return F.kl_div(student.log_softmax(1), teacher.log_softmax(1), log_target=True, reduction="batchmean")


def distilled_int8(
    network: nn.Module,
    calibration: Tensor,
    quantizer: Any,
    steps: int,
    *,
    lr: float = DISTILL_LR,
    seed: int = 0,
    progress: bool = True,
) -> tuple[nn.Module, dict[str, float]]:
    """``network`` (a classifier, left unchanged) as a converted PT2E int8 module: ``quantizer``
    (built from a :func:`fake_quantized` config) places the fake quantization, ``calibration``
    (preprocessed images) sets the activation ranges, then ``steps`` batches of them fit the
    weights (see the module docstring). Returns the module and the mean KL to the float network
    on the first 32 calibration images before and after (simulated in PyTorch)."""
    from torchao.quantization.pt2e import disable_observer, move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
    from torchvision.transforms import v2
    from tqdm.auto import tqdm

    teacher, _ = fold_batchnorm(network)  # PT2E's post-training path folds them too
    student = copy.deepcopy(teacher)  # torch.export shares parameters with the module it captures
    calibration = calibration.float()
    batch = torch.export.Dim("batch", min=1, max=max(BATCH_SIZE, 32))  # training batches and the 32-image probe
    captured = torch.export.export(student, (calibration[:2],), dynamic_shapes=({0: batch},))
    prepared = prepare_qat_pt2e(captured.module(), quantizer)
    with torch.no_grad():
        for start in range(0, len(calibration), BATCH_SIZE):
            prepared(calibration[start : start + BATCH_SIZE])
        prepared.apply(disable_observer)  # the ranges stay as calibrated; only the weights move
        probe = calibration[:32]
        targets = teacher(probe)
        kl = {"kl_before": _kl(prepared(probe), targets).item()}
    augment = v2.Compose([v2.RandomResizedCrop(calibration.shape[-1], scale=(0.25, 1.0)), v2.RandomHorizontalFlip()])
    optimizer = torch.optim.Adam(prepared.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    bar = tqdm(range(steps), desc="fitting int8 to fp32", unit="step", disable=not progress)
    with torch.random.fork_rng():  # the crops draw from the global generator: seeded here, restored after
        torch.manual_seed(seed)
        for _ in bar:
            images = torch.stack([augment(calibration[i]) for i in torch.randint(len(calibration), (BATCH_SIZE,))])
            with torch.no_grad():
                wanted = teacher(images)
            loss = _kl(prepared(images), wanted)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(kl=f"{loss.item():.4f}")
    move_exported_model_to_eval(prepared)  # what the converter expects (the graph has no batch norm or dropout left)
    with torch.no_grad():
        kl["kl_after"] = _kl(prepared(probe), targets).item()
    return convert_pt2e(prepared, fold_quantize=False), kl
