"""The least-squares refit: each decoupled layer's 1x1 conv fitted to the original layer's outputs on
calibration images."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .layers import DecoupledConv
from .plan import capture, forward_hooks

__all__ = ["fit_pointwise", "refit", "response_moments"]


def _last_pointwise(module: nn.Module) -> str | None:
    """Path inside ``module`` to the plain 1x1 conv its output comes out of, if any
    ("" for the module itself): the linear map a least-squares refit can solve for."""
    if isinstance(module, nn.Conv2d):
        plain = module.kernel_size == (1, 1) and module.groups == 1 and module.stride == (1, 1)
        return "" if plain and module.padding in ((0, 0), "valid") else None
    if isinstance(module, DecoupledConv):
        return "pointwise" if module.order == "dw_pw" else None
    if isinstance(module, nn.Sequential) and len(module):
        inner = _last_pointwise(module[-1])
        return None if inner is None else ".".join(filter(None, [str(len(module) - 1), inner]))
    return None


@torch.no_grad()
def fit_pointwise(pointwise: nn.Conv2d, pairs: Iterable[tuple[Tensor, Tensor]], max_rows: int = 4096) -> str:
    """Least-squares weights and bias of a 1x1 conv mapping each input ``x`` to its target
    ``y`` (pixels as samples, at most ``max_rows`` per pair), ridged towards the current
    weights so that weakly determined directions stay where they were.  Returns
    "fitted", "biased" (fitted, and a bias added) or "too few" samples (left as it was)."""
    generator = torch.Generator().manual_seed(0)
    width = pointwise.in_channels + 1
    device = pointwise.weight.device
    gram = torch.zeros(width, width, dtype=torch.float64, device=device)
    cross = torch.zeros(width, pointwise.out_channels, dtype=torch.float64, device=device)
    total_rows = 0
    for x, y in pairs:
        rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).double()
        wanted = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1]).double()
        if rows.shape[0] > max_rows:
            pick = torch.randperm(rows.shape[0], generator=generator)[:max_rows].to(device)
            rows, wanted = rows[pick], wanted[pick]
        rows = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype, device=device)], 1)
        gram += rows.T @ rows
        cross += rows.T @ wanted
        total_rows += rows.shape[0]
    if total_rows < 2 * width:
        return "too few"  # fewer samples than twice the C_in + 1 unknowns per output
    bias = pointwise.bias
    start = torch.cat(
        [
            pointwise.weight.reshape(pointwise.out_channels, -1).T.double(),
            torch.zeros_like(cross[:1]) if bias is None else bias.detach().double()[None, :],
        ]
    )
    strength = 1e-3 * gram.diagonal().mean()
    identity = torch.eye(width, dtype=gram.dtype, device=device)
    solution = torch.linalg.solve(gram + strength * identity, cross + strength * start)
    pointwise.weight.copy_(solution[:-1].T.reshape(pointwise.weight.shape).to(pointwise.weight.dtype))
    if bias is None:
        pointwise.bias = nn.Parameter(solution[-1].to(pointwise.weight.dtype))
        return "biased"
    bias.copy_(solution[-1])
    return "fitted"


@torch.no_grad()
def refit(
    original: nn.Module, converted: nn.Module, names: list[str], batches: list[Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Re-fit the last 1x1 conv (and bias) of each converted layer so that, fed the
    converted network's own features, it reproduces the original layer's output
    (:func:`fit_pointwise`); layers go in forward order so each absorbs earlier errors.

    ``names`` are the original convs (the same names in both networks).  Returns
    (refitted layers, layers with too few samples, 1x1 convs that gained a bias)."""
    refitted: list[str] = []
    skipped: list[str] = []
    biased: list[str] = []
    for name in names:
        inner = _last_pointwise(converted.get_submodule(name))
        if inner is None:
            continue
        full = ".".join(filter(None, [name, inner]))
        pairs = []
        for images in batches:
            features = capture(converted, [full], images, keep_inputs=True)[full]["inputs"]
            targets = capture(original, [name], images, keep_outputs=True)[name]["outputs"]
            pairs += zip(features, targets)  # one pair per call of a reused conv
        outcome = fit_pointwise(converted.get_submodule(full), pairs)
        if outcome == "too few":
            skipped.append(name)
            continue
        refitted.append(name)
        if outcome == "biased":
            biased.append(full)
    return refitted, skipped, biased


@torch.no_grad()
def response_moments(model: nn.Module, names: list[str], batches: list[Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """Per conv, the mean and covariance of its bias-free output vectors over every
    pixel of the calibration images (accumulated in float64 as the batches pass)."""
    sums: dict[str, list] = {}

    def hook(module, args, output, name):
        y = output if module.bias is None else output - module.bias[None, :, None, None]
        rows = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1]).double()
        if name not in sums:
            sums[name] = [0, torch.zeros_like(rows[0]), torch.zeros(rows.shape[1], rows.shape[1], dtype=rows.dtype)]
        sums[name][0] += rows.shape[0]
        sums[name][1] += rows.sum(0)
        sums[name][2] += (rows.T @ rows).to(sums[name][2].device)

    with forward_hooks(model, names, hook):
        for images in batches:
            model(images)
    moments = {}
    for name, (count, total, outer) in sums.items():
        mean = total / count
        moments[name] = (mean, outer.to(mean.device) / count - torch.outer(mean, mean))
    return moments
