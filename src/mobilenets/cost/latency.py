"""Wall-clock latency of a model, measured the same way everywhere."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping
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


# Seconds to wait before each turn of alternating rounds that time different runtimes in one
# process: on a 2-core host (AMD EPYC Zen 5) a LiteRT interpreter's worker threads still took a
# core 50 ms after its turn, and ONNX Runtime timed after it ran 12 % slower (bench's one-process
# table 35-45 %: ONNX Runtime int8 0.59x of fp32's torchvision export beside LiteRT and
# ExecuTorch, 0.45x without); after 0.5 s the difference was gone (benchmarks/engine_settle.py).
# Turns within one runtime need only its own threads to stop spinning.
SETTLE_BETWEEN_RUNTIMES_S = 0.5
SETTLE_WITHIN_RUNTIME_S = 0.05


def settle_pause(runtimes: Iterable[str]) -> float:
    """The pause for :func:`alternating_ms` when the calls run on these runtimes (names, repeated
    or not): long when more than one runtime shares the process."""
    return SETTLE_BETWEEN_RUNTIMES_S if len(set(runtimes)) > 1 else SETTLE_WITHIN_RUNTIME_S


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
