"""Wall-clock latency of a model, measured the same way everywhere."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import torch
from torch import nn

K = TypeVar("K")

__all__ = ["WIDE_SPREAD", "alternating_ms", "measure_latency", "median_ms", "spread", "timings_ms"]


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


def alternating_ms(
    calls: Mapping[K, Callable[[], object]], *, rounds: int, runs: int, pause: float = 0.0
) -> dict[K, list[float]]:
    """Milliseconds of each call, ``runs`` back to back a round, the calls taking turns for
    ``rounds`` rounds (warm them up first): drift of a noisy machine (clock, neighbours) then
    reaches them all alike, so their ratios hold.  ``pause`` seconds before each call's turn let
    the previous engine's worker threads stop spinning."""
    times: dict[K, list[float]] = {key: [] for key in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            if pause:
                time.sleep(pause)
            times[key] += timings_ms(call, runs=runs, warmup=0)
    return times


# p90 / p10 above this: the host was busy while timing, and one figure would mislead
WIDE_SPREAD = 1.5


def spread(times: list[float]) -> dict[str, float]:
    """Median and the 10th-90th percentile range of ``times`` (ms), and whether it is wide."""
    deciles = statistics.quantiles(times, n=10)
    low, high = deciles[0], deciles[-1]
    return {"median_ms": statistics.median(times), "p10_ms": low, "p90_ms": high, "wide": high > WIDE_SPREAD * low}
