"""Wall-clock latency of a model, measured the same way everywhere."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

__all__ = ["measure_latency"]


@torch.no_grad()
def measure_latency(
    model: nn.Module, resolution: int, *, batch_size: int = 1, runs: int = 20, warmup: int = 3
) -> float:
    """Median milliseconds of ``model`` on a (batch, C, R, R) input, eval mode, no grad."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.randn(batch_size, getattr(model, "in_channels", 3), resolution, resolution, device=device)
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(1000 * (time.perf_counter() - start))
    model.train(was_training)
    return statistics.median(times)
