"""What a conversion reports: per layer (rank, mult-adds, error) and for the network; printed and
saved."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .._table import format_table, human
from .plan import layer_error, param_count

__all__ = ["DecoupleReport", "LayerReport", "layer_reports", "skipped_summary"]


@dataclass
class LayerReport:
    name: str
    kernel: tuple[int, int, int, int]  # N, M, kh, kw
    out_hw: tuple[int, int]
    rank: int | str | None  # None: left as it was (see ``note``); a pipeline's: each step's ranks
    calls: int = 1  # times the forward pass runs it (costs count every call)
    note: str = ""
    retained_energy: float | None = None
    relative_error: float | None = None
    mult_adds_before: int = 0
    mult_adds_after: int = 0
    params_before: int = 0
    params_after: int = 0


@dataclass
class DecoupleReport:
    method: str  # "decouple-dw_pw", "decouple-pw_dw", "cp", "tucker", "spatial"
    layers: list[LayerReport]
    mult_adds_before: int
    mult_adds_after: int
    params_before: int
    params_after: int
    refined: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # latency, accuracy (added by the CLI/benchmarks)
    skipped: dict[str, str] = field(default_factory=dict)  # convs not eligible, and why

    @property
    def reduction(self) -> float:
        return self.mult_adds_before / max(1, self.mult_adds_after)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reduction": self.reduction}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        rows = [
            [
                layer.name,
                "x".join(map(str, layer.kernel)),
                "kept" if layer.rank is None else str(layer.rank),
                "" if layer.retained_energy is None else f"{100 * layer.retained_energy:.2f}%",
                "" if layer.relative_error is None else f"{layer.relative_error:.2e}",
                human(layer.mult_adds_before),
                human(layer.mult_adds_after),
                human(layer.params_before),
                human(layer.params_after),
                layer.note,
            ]
            for layer in self.layers
        ]
        header = [
            "layer",
            "N x M x k x k",
            "T",
            "energy",
            "rel. error",
            "MACs",
            "MACs after",
            "params",
            "after",
            "note",
        ]
        totals = (
            f"{self.method}{' + least-squares refinement' if self.refined else ''}: "
            f"{human(self.mult_adds_before)} -> {human(self.mult_adds_after)} mult-adds ({self.reduction:.2f}x fewer), "
            f"{human(self.params_before)} -> {human(self.params_after)} params"
        )
        extras = "".join(f"\n{k.replace('_', ' ')}: {_readable(v)}" for k, v in self.extra.items())
        return format_table(header, rows) + "\n" + totals + extras


def skipped_summary(skipped: dict[str, str]) -> str:
    """``{"a": "1x1 (already pointwise)", "b": ...}`` -> ``2 1x1 (already pointwise): a, b``."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in skipped.items():
        by_reason.setdefault(reason, []).append(name)
    parts = []
    for reason, names in by_reason.items():
        shown = ", ".join(names[:3]) + (f", ... {len(names) - 3} more" if len(names) > 3 else "")
        parts.append(f"{len(names)} {reason}: {shown}")
    return "; ".join(parts)


def _readable(value: Any) -> str:
    """A report extra as a person reads it: ``{"top1": 0.8855}`` -> ``top-1 88.55%``."""
    if not isinstance(value, dict):
        return str(value)
    parts = []
    for key, v in value.items():
        if key in ("top1", "top5"):
            parts.append(f"top-{key[-1]} {100 * v:.2f}%")
        elif key == "tried":  # the latency search's steps
            steps = ", ".join(f"{100 * fraction:.0f}% -> {speed:.2f}x" for fraction, speed in v)
            parts.append(f"searched (layer time cut -> network speedup) {steps}")
        elif key == "target_met":
            parts.append("target met" if v else "TARGET MISSED")
        elif key == "target":
            parts.append(f"target {v:g}x")
        elif key.endswith("_ms"):
            parts.append(f"{key[: -len('_ms')].replace('_', ' ')} {v:.2f} ms")
        else:
            parts.append(f"{key.replace('_', ' ')} {v}")
    return ", ".join(parts)


def layer_reports(
    names: list[str],
    convs: dict[str, nn.Conv2d],
    shapes: dict[str, dict[str, Any]],
    converted: nn.Module,
    chosen: dict[str, int],
    notes: dict[str, str],
    retained: dict[str, float],
    original_cost: dict[str, int],
    new_cost: Callable[[str, int], int],
) -> list[LayerReport]:
    """One row per conv: its rank, its error against the original on the probe, its cost before and after."""
    reports = []
    for n in names:
        conv, shape = convs[n], shapes[n]
        new = converted.get_submodule(n)
        t = chosen.get(n)
        reports.append(
            LayerReport(
                name=n,
                kernel=tuple(conv.weight.shape),
                out_hw=shape["out_hw"],
                calls=len(shape["calls"]),
                rank=t,
                note=notes.get(n, ""),
                retained_energy=retained.get(n),
                relative_error=layer_error(conv, new, shape["input"]) if t is not None else None,
                mult_adds_before=original_cost[n],
                mult_adds_after=original_cost[n] if t is None else new_cost(n, t),
                params_before=param_count(conv),
                params_after=param_count(new),
            )
        )
    return reports
