"""Wall-clock latency of a model, measured the same way everywhere."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["WIDE_SPREAD", "measure_latency", "median_ms", "spread", "timings_ms"]


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
    return statistics.median(timings_ms(call, runs=runs, warmup=warmup))


def timings_ms(call: Callable[[], object], *, runs: int = 20, warmup: int = 3) -> list[float]:
    """Milliseconds of each of ``runs`` calls of ``call()``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(1000 * (time.perf_counter() - start))
    return times


# p90 / p10 above this: the host was busy while timing, and one figure would mislead
WIDE_SPREAD = 1.5


def spread(times: list[float]) -> dict[str, float]:
    """Median and the 10th-90th percentile range of ``times`` (ms), and whether it is wide."""
    ordered = sorted(times)
    low, high = ordered[int(0.1 * (len(ordered) - 1))], ordered[int(round(0.9 * (len(ordered) - 1)))]
    return {"median_ms": statistics.median(ordered), "p10_ms": low, "p90_ms": high, "wide": high > WIDE_SPREAD * low}
