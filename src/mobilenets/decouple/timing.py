"""Measured latency for latency budgets: each layer at each rank, and the whole network a target is met
on."""

from __future__ import annotations

import copy
import functools
import warnings
from typing import Any

import torch
from torch import nn

from ..cost.latency import median_ms
from .layers import DecoupledConv
from .plan import LayerPlan

__all__ = ["NETWORK_STEPS", "NETWORK_TOLERANCE", "latency_table", "network_ms", "network_record"]


@torch.no_grad()
def _measure(module: nn.Module, shape: tuple[int, ...], backend: str, runs: int = 9) -> float:
    """Batch-1 latency (ms) of one layer on the backend the model will run on."""
    module = module.eval().cpu()
    x = torch.randn(1, *shape)
    if backend == "channels_last":
        module = module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        return median_ms(lambda: module(x), runs=runs, warmup=2)
    import tempfile

    from ..export.ort import ort_session

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/layer.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), path, input_names=["x"], opset_version=17, dynamo=False)
        session = ort_session(path, torch.get_num_threads())
        feed = {"x": x.numpy()}
        return median_ms(lambda: session.run(None, feed), runs=runs, warmup=2)


# Layer timings by (backend, threads, input shape, layer structure): a layer's time does not
# depend on its weights, so sweeps and repeated conversions measure each shape once per process
# (which also keeps their allocations consistent with one another).
_MEASURED: dict[tuple, float] = {}


def _structure(module: nn.Module) -> tuple:
    return tuple(
        (type(m).__name__, tuple(m.weight.shape), m.stride, m.padding, m.dilation, m.groups, m.bias is not None)
        for m in module.modules()
        if isinstance(m, nn.Conv2d)
    )


def _measure_once(module: nn.Module, shape: tuple[int, ...], backend: str) -> float:
    key = (backend, torch.get_num_threads(), tuple(shape), _structure(module))
    if key not in _MEASURED:
        _MEASURED[key] = _measure(module, shape, backend)
    return _MEASURED[key]


def latency_table(layers: list[LayerPlan], backend) -> dict[tuple[str, int | None], float]:
    """Per-layer batch-1 latency (ms) of the original conv and every cheaper rank, on ``backend``
    (a name, or a function ``(module, (C, H, W)) -> ms``); a conv run n times counts n times."""
    measure = backend if callable(backend) else functools.partial(_measure_once, backend=backend)
    table = {}
    for layer in layers:
        shape, calls = (layer.conv.in_channels, *layer.in_hw), len(layer.shapes["calls"])
        table[(layer.name, None)] = calls * measure(copy.deepcopy(layer.conv), shape)
        for rank in layer.cheaper_ranks():
            table[(layer.name, rank)] = calls * measure(DecoupledConv.from_conv(layer.conv, rank, layer.order), shape)
    return table


# A latency target is met on the whole network, searched over the summed layer-time saving:
# steps of bisection (each one conversion and one whole-network timing, no refit), and how far
# above the target the network may land before a smaller saving is tried.
NETWORK_STEPS, NETWORK_TOLERANCE = 6, 0.05


def network_ms(model: nn.Module, size: tuple[int, int, int], backend) -> float:
    """Batch-1 latency (ms) of the whole network on ``backend`` (an fp32 CPU copy is timed)."""
    net = copy.deepcopy(model).float().cpu().eval()
    return backend(net, size) if callable(backend) else _measure(net, size, backend, runs=15)


def network_record(search: dict[str, Any], converted: nn.Module, size, backend, target: float) -> dict[str, Any]:
    """The returned network's whole-network latency against the target, as the report keeps it;
    a missed target is also a warning (timings move ~10 % between calls: met within that noise)."""
    after_ms = network_ms(converted, size, backend)
    speedup = search["before_ms"] / after_ms
    met = speedup >= target * (1 - 2 * NETWORK_TOLERANCE)
    if not met:
        warnings.warn(f"latency target {target:g}x missed: the returned network runs {speedup:.2f}x faster "
                      f"({search['before_ms']:.2f} -> {after_ms:.2f} ms)", stacklevel=4)  # fmt: skip
    return {
        "before_ms": search["before_ms"],
        "after_ms": after_ms,
        "speedup": round(speedup, 3),
        "target": target,
        "target_met": met,
        "tried": search["tried"],  # (fraction of the summed layer times saved, network speedup)
    }
