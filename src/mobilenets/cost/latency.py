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


# Seconds to wait before a turn of alternating rounds: on a 2-core host (AMD EPYC Zen 5) a LiteRT
# interpreter's worker threads still took a core 50 ms after its turn, and ONNX Runtime timed after
# it ran 12 % slower (bench's one-process table 35-45 %: ONNX Runtime int8 0.59x of fp32's
# torchvision export beside LiteRT and ExecuTorch, 0.45x without); after 0.5 s the difference was
# gone (benchmarks/engine_settle.py).  A turn after its own runtime's waits only for its own threads.
SETTLE_BETWEEN_RUNTIMES_S = 0.5
SETTLE_WITHIN_RUNTIME_S = 0.05


def alternating_ms(
    calls: Mapping[K, Callable[[], object]],
    *,
    rounds: int,
    runs: int,
    engines: Mapping[K, str] | None = None,
    turns: Mapping[K, Callable[[], list[float]]] | None = None,
) -> dict[K, list[float]]:
    """Milliseconds of each call, ``runs`` back to back a round, the calls taking turns for
    ``rounds`` rounds (warm them up first): drift of a noisy machine (clock, neighbours) then
    reaches them all alike, so their ratios hold.  ``turns`` are keys timed elsewhere (a timing
    process of their own, :class:`mobilenets.runtimes.timing.TimingProcesses`): each call of one
    times a round and returns its milliseconds.  ``engines`` names the runtime of each key: the
    turns go runtime by runtime, and a turn waits :data:`SETTLE_BETWEEN_RUNTIMES_S` after another
    runtime's turn, :data:`SETTLE_WITHIN_RUNTIME_S` after its own (all one runtime without it)."""
    turns = turns or {}
    keyed = [*calls, *turns]
    engines = engines or dict.fromkeys(keyed, "")
    order = list(dict.fromkeys(engines[key] for key in keyed))
    keys = sorted(keyed, key=lambda key: order.index(engines[key]))  # stable: the given order within a runtime
    times: dict[K, list[float]] = {key: [] for key in keyed}
    previous = engines[keys[-1]] if keys else ""
    for _ in range(rounds):
        for key in keys:
            time.sleep(SETTLE_WITHIN_RUNTIME_S if engines[key] == previous else SETTLE_BETWEEN_RUNTIMES_S)
            previous = engines[key]
            times[key] += turns[key]() if key in turns else timings_ms(calls[key], runs=runs, warmup=0)
    return times


# p90 / p10 above this: the host was busy while timing, and one figure would mislead
WIDE_SPREAD = 1.5


def spread(times: list[float]) -> dict[str, float]:
    """Median and the 10th-90th percentile range of ``times`` (ms), and whether it is wide."""
    deciles = statistics.quantiles(times, n=10)
    low, high = deciles[0], deciles[-1]
    return {"median_ms": statistics.median(times), "p10_ms": low, "p90_ms": high, "wide": high > WIDE_SPREAD * low}
