"""Batch-norm running statistics re-estimated from the current weights ("precise BN").

A batch norm trains on each batch's statistics but is evaluated with running averages that
follow the weights with a lag of about ``1 / momentum`` steps: 33 steps at SSD's momentum 0.03,
100 at MobileNetV3's 0.01. A run of a few hundred steps on a few hundred images therefore
evaluates (and ships) a network whose statistics belong to weights it no longer has: the loss
falls while validation stays near zero. Re-estimating the averages on training batches with
the current weights before each evaluation removes the lag (Wu & Johnson 2021, "Rethinking
'Batch' in BatchNorm": PreciseBN, which they find better and more stable than the moving average
and near its best after 10^3-10^4 samples; ``torch.optim.swa_utils.update_bn`` does the same for
a whole loader and every batch norm). Here only the batch norms that train are re-estimated
(frozen ones keep their pretrained statistics) and the pass stops after a number of images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["recompute_batchnorm", "training_batchnorms"]


def training_batchnorms(model: nn.Module) -> list[str]:
    """Names of ``model``'s batch norms that are in training mode (those a run updates)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]


@torch.no_grad()
def recompute_batchnorm(
    model: nn.Module,
    names: Iterable[str],
    batches: Iterable[Any],
    forward: Callable[[Any], Any],
    *,
    limit: int,
    average: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> int:
    """Replace the running mean and variance of ``model``'s batch norms ``names`` by their
    plain average over ``forward(inputs)`` for the batches of ``batches`` (each ``(inputs,
    count)``) until ``limit`` images; ``average`` combines the estimates of several processes.
    Every other module keeps its mode. Returns the images seen (0: nothing changed)."""
    modules = dict(model.named_modules())
    norms = [modules[name] for name in names]
    if not norms:
        return 0
    saved = [(m.training, m.momentum, m.running_mean.clone(), m.running_var.clone()) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches seen
        m.train()
    seen = 0
    try:
        for inputs, count in batches:
            forward(inputs)
            seen += count
            if seen >= limit:
                break
    finally:
        for m, (training, momentum, mean, var) in zip(norms, saved):
            m.momentum = momentum
            m.train(training)
            if not seen:  # no batch (or an exception): the statistics as they were
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
    for m in norms:
        average(m.running_mean)
        average(m.running_var)
    return seen
