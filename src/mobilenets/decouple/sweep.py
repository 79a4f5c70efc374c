"""Every conversion method at several mult-adds reductions: the comparison ``mobilenets decouple --sweep``
prints and plots, as a library call.

Scoring a converted network is the caller's (``score``: a classifier's top-1 on the user's images, or
nothing), so this module needs no task; each finished row reaches ``on_result`` at once, because a
sweep with CP in it runs for minutes and what is done must not wait for the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from .convert import decouple
from .pipeline import decompose
from .report import DecoupleReport

__all__ = ["SweepRow", "sweep", "sweep_methods"]

Converter = Callable[[float], tuple[nn.Module, DecoupleReport]]


@dataclass
class SweepRow:
    """One method at one target: what it reached, or why it could not."""

    method: str
    target: float
    reduction: float | None = None  # the mult-adds reduction reached; None when the method failed
    seconds: float | None = None
    scores: dict[str, float] = field(default_factory=dict)  # what ``score`` returned (top1, top5)
    error: str | None = None

    def to_record(self) -> dict[str, Any]:
        """The JSON a sweep file holds for a finished row."""
        return {"method": self.method, "target": self.target, "reduction": self.reduction,
                "seconds": round(self.seconds or 0.0, 2), **self.scores}  # fmt: skip


def sweep_methods(
    model: nn.Module, input_size: tuple[int, int, int], calibration: Tensor | None = None
) -> list[tuple[str, Converter]]:
    """(label, target reduction -> (converted model, report)) for every method, CP (the slow one) last;
    with ``calibration`` the methods that use images are calibrated."""

    def method(name: str, **options) -> Converter:
        if name == "decouple":
            return lambda r: decouple(model, target_reduction=r, input_size=input_size, **options)
        return lambda r: decompose(model, name, target_reduction=r, input_size=input_size, **options)

    methods = [
        ("decouple (greedy)", method("decouple")),
        ("decouple (uniform)", method("decouple", allocation="uniform")),
        ("spatial", method("spatial")),
        ("tucker", method("tucker")),
        ("channel", method("channel")),
    ]
    if calibration is not None:
        methods += [
            ("decouple + refine", method("decouple", calibration=calibration)),
            ("channel (calibrated)", method("channel", calibration=calibration)),
            ("channel+decouple (calibrated)", method("channel+decouple", calibration=calibration)),
            ("channel+spatial+decouple (calibrated)", method("channel+spatial+decouple", calibration=calibration)),
        ]
    else:
        methods += [
            ("channel+decouple", method("channel+decouple")),
            ("channel+spatial+decouple", method("channel+spatial+decouple")),
        ]
    return methods + [("cp", method("cp"))]


def sweep(
    model: nn.Module,
    reductions: Sequence[float],
    input_size: tuple[int, int, int],
    *,
    calibration: Tensor | None = None,
    score: Callable[[nn.Module], dict[str, float]] | None = None,
    on_start: Callable[[str, float], None] | None = None,
    on_result: Callable[[SweepRow], None] | None = None,
) -> list[SweepRow]:
    """Convert ``model`` with every method of :func:`sweep_methods` at each of ``reductions``; a method
    that fails at a target (an unreachable reduction, say) is a row with its error, the others go on."""
    rows = []
    for name, convert in sweep_methods(model, input_size, calibration):
        for target in reductions:
            if on_start is not None:
                on_start(name, target)
            start = time.perf_counter()
            try:
                converted, report = convert(target)
            except Exception as exc:  # one method failing must not lose the others
                row = SweepRow(name, target, error=f"{type(exc).__name__}: {exc}")
            else:
                seconds = time.perf_counter() - start
                scores = score(converted) if score is not None else {}
                row = SweepRow(name, target, report.reduction, seconds, scores)
            rows.append(row)
            if on_result is not None:
                on_result(row)
    return rows
