"""Wall-clock latency of a model, measured the same way everywhere."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["measure_latency", "median_ms"]


@torch.no_grad()
def measure_latency(
    model: nn.Module, resolution: int, *, batch_size: int = 1, runs: int = 20, warmup: int = 3
) -> float:
    """Median milliseconds of ``model`` on a (batch, C, R, R) input, eval mode, no grad."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.randn(batch_size, getattr(model, "in_channels", 3), resolution, resolution, device=device)

    def call() -> None:
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    try:
        return median_ms(call, runs=runs, warmup=warmup)
    finally:
        model.train(was_training)


def median_ms(call: Callable[[], object], *, runs: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of ``call()`` over ``runs`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)
