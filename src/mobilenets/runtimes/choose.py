"""Choose the model for a latency budget: the MobileNet papers' own argument (V1's width α and
resolution ρ, V2's width and resolution grid, V3's Large and Small), measured on this machine.

Every published ImageNet variant is built (untrained: latency does not depend on the weights),
run on one runtime at one precision, and timed in alternating rounds so that a noisy host slows
all alike.  Beside each latency stands the variant's published top-1; the most accurate
variant under the budget is the choice, and the accuracy-against-latency front is drawn.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import Runtime, get_runtime

# Published ImageNet top-1 (%, single centre crop) and millions of multiply-adds.  Sources, as the
# authors' model zoo lists them: V1: tensorflow/models research/slim/nets/mobilenet_v1.md (the
# 2018-02-22 float checkpoints); V2: tensorflow/models research/slim/nets/mobilenet/README.md,
# "Mobilenet V2 Imagenet Checkpoints"; V3: top-1 from the same README's "Mobilenet V3 Imagenet
# Checkpoints" (float), mult-adds from the V3 paper's Table 3 (the README counts Small at 66M).
V1_PUBLISHED = {
    (1.0, 224): (70.9, 569), (1.0, 192): (70.0, 418), (1.0, 160): (68.0, 291), (1.0, 128): (65.2, 186),
    (0.75, 224): (68.4, 317), (0.75, 192): (67.2, 233), (0.75, 160): (65.3, 162), (0.75, 128): (62.1, 104),
    (0.5, 224): (63.3, 150), (0.5, 192): (61.7, 110), (0.5, 160): (59.1, 77), (0.5, 128): (56.3, 49),
    (0.25, 224): (49.8, 41), (0.25, 192): (47.7, 34), (0.25, 160): (45.5, 21), (0.25, 128): (41.5, 14),
}  # fmt: skip
V2_PUBLISHED = {
    (1.4, 224): (75.0, 582), (1.3, 224): (74.4, 509),
    (1.0, 224): (71.8, 300), (1.0, 192): (70.7, 221), (1.0, 160): (68.8, 154), (1.0, 128): (65.3, 99),
    (1.0, 96): (60.3, 56),
    (0.75, 224): (69.8, 209), (0.75, 192): (68.7, 153), (0.75, 160): (66.4, 107), (0.75, 128): (63.2, 69),
    (0.75, 96): (58.8, 39),
    (0.5, 224): (65.4, 97), (0.5, 192): (63.9, 71), (0.5, 160): (61.0, 50), (0.5, 128): (57.7, 32),
    (0.5, 96): (51.2, 18),
    (0.35, 224): (60.3, 59), (0.35, 192): (58.2, 43), (0.35, 160): (55.7, 30), (0.35, 128): (50.8, 20),
    (0.35, 96): (45.5, 11),
}  # fmt: skip
V3_PUBLISHED = {
    ("mobilenet_v3_large", 1.0): (75.2, 219), ("mobilenet_v3_large", 0.75): (73.3, 155),
    ("mobilenet_v3_small", 1.0): (67.5, 56), ("mobilenet_v3_small", 0.75): (65.4, 44),
}  # fmt: skip
FAMILIES = ("v1", "v2", "v3")


@dataclass(frozen=True)
class Variant:
    model: str  # registry name
    width: float
    resolution: int
    top1: float  # published ImageNet top-1, %
    published_mult_adds: int  # millions, as published

    @property
    def label(self) -> str:
        return f"{self.model} {self.width:g}x {self.resolution}px"


def published_variants(families: Sequence[str] = FAMILIES) -> list[Variant]:
    """The published ImageNet variants of the named families, with their top-1."""
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ConfigError(f"unknown famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}; "
                          f"choose from {', '.join(FAMILIES)}")  # fmt: skip
    variants = []
    if "v1" in families:
        variants += [Variant("mobilenet_v1", w, r, *published) for (w, r), published in V1_PUBLISHED.items()]
    if "v2" in families:
        variants += [Variant("mobilenet_v2", w, r, *published) for (w, r), published in V2_PUBLISHED.items()]
    if "v3" in families:
        variants += [Variant(name, w, 224, *published) for (name, w), published in V3_PUBLISHED.items()]
    return variants


@dataclass
class Measured:
    variant: Variant
    mult_adds: int
    median_ms: float | None = None
    error: str = ""
    on_front: bool = False  # no other variant is both faster and more accurate

    def row(self) -> dict[str, Any]:
        return {**asdict(self.variant), "label": self.variant.label, "mult_adds": self.mult_adds,
                "median_ms": self.median_ms, "error": self.error, "on_front": self.on_front}  # fmt: skip


def _bench_name(runtime: Runtime, precision: str) -> str:
    for name, served in runtime.bench.items():
        if served == precision:
            return name
    raise ConfigError(f"{runtime.title} has no {precision} path; it runs {', '.join(runtime.bench.values())}")


def measure_variants(
    variants: Sequence[Variant],
    *,
    runtime: str = "onnxruntime",
    precision: str = "fp32",
    threads: int = 2,
    runs: int = 30,
    progress: Callable[[str], None] | None = None,
) -> list[Measured]:
    """Median batch-1 latency of every variant on ``runtime`` at ``precision`` (see the module docstring)."""
    import torch

    from ..cost import profile
    from ..cost.latency import alternating_ms
    from ..models import create_model
    from ..predict import default_data_info
    from . import error_line
    from .bench import PreparedModel

    engine = get_runtime(runtime)
    engine.check(precision)
    path = _bench_name(engine, precision)
    measured, calls = [], {}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="mobilenets-choose-") as tmp:
            for index, variant in enumerate(variants):
                model = create_model(variant.model, width_mult=variant.width, resolution=variant.resolution).eval()
                result = Measured(variant, profile(model, (3, variant.resolution, variant.resolution)).mult_adds)
                measured.append(result)
                prepared = PreparedModel(model, default_data_info(model), Path(tmp), None, f"v{index}")
                x = torch.rand(1, 3, variant.resolution, variant.resolution)
                try:
                    run = engine.bench_runner(prepared, precision, threads)
                    run(x)  # first-call allocations
                    calls[index] = lambda run=run, x=x: run(x)
                except Exception as exc:  # one variant that does not export must not hide the others
                    result.error = error_line(exc)
                if progress:
                    progress(f"prepared {variant.label} on {path} ({index + 1}/{len(variants)})")
            if progress:
                progress(f"timing {len(calls)} variants in 3 alternating rounds")
            # every variant runs on one runtime: turns wait only for its own threads (SETTLE_WITHIN_RUNTIME_S)
            times = alternating_ms(calls, rounds=3, runs=max(1, -(-runs // 3)))
    finally:
        torch.set_num_threads(previous)
    for index, samples in times.items():
        measured[index].median_ms = statistics.median(samples)
    _mark_front(measured)
    return measured


def _mark_front(measured: Sequence[Measured]) -> None:
    timed = sorted((m for m in measured if m.median_ms is not None), key=lambda m: (m.median_ms, -m.variant.top1))
    best = float("-inf")
    for m in timed:
        if m.variant.top1 > best:
            m.on_front, best = True, m.variant.top1


def choose(measured: Sequence[Measured], latency_ms: float) -> Measured | None:
    """The most accurate variant whose measured latency is within the budget (the faster on a tie)."""
    fitting = [m for m in measured if m.median_ms is not None and m.median_ms <= latency_ms]
    return max(fitting, key=lambda m: (m.variant.top1, -m.median_ms), default=None)


def choice_table(measured: Sequence[Measured], chosen: Measured | None) -> str:
    from .._table import format_table, human

    rows = []
    for m in sorted(measured, key=lambda m: (m.median_ms is None, m.median_ms or 0)):
        mark = "<- chosen" if m is chosen else ("front" if m.on_front else "")
        timing = m.error[:50] if m.error else f"{m.median_ms:.2f}"
        rows.append([m.variant.label, human(m.mult_adds), f"{m.variant.top1:.1f}", timing, mark])
    return format_table(["variant", "mult-adds", "published top-1 %", "median ms", ""], rows)


def plot_front(measured: Sequence[Measured], chosen: Measured | None, latency_ms: float, title: str,
               out: str | Path) -> Path:  # fmt: skip
    """Published top-1 against measured latency, one colour per family, the front joined, the budget
    a dashed line and the choice ringed."""
    from ..plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    timed = [m for m in measured if m.median_ms is not None]
    for colour, family in zip(("C0", "C1", "C2"), ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3")):
        rows = [m for m in timed if m.variant.model.startswith(family)]
        if rows:
            ax.scatter([m.median_ms for m in rows], [m.variant.top1 for m in rows], color=colour, label=family, s=18)
    front = sorted((m for m in timed if m.on_front), key=lambda m: m.median_ms)
    ax.step([m.median_ms for m in front], [m.variant.top1 for m in front], where="post", color="gray", lw=1,
            label="front (nothing both faster and more accurate)")  # fmt: skip
    ax.axvline(latency_ms, color="red", ls="--", lw=1, label=f"budget {latency_ms:g} ms")
    if chosen is not None:
        ax.scatter([chosen.median_ms], [chosen.variant.top1], s=160, facecolors="none", edgecolors="red", lw=2)
        ax.annotate(chosen.variant.label, (chosen.median_ms, chosen.variant.top1), textcoords="offset points",
                    xytext=(8, -12), fontsize=8, color="red")  # fmt: skip
    ax.set(xlabel="median latency here, batch 1 (ms)", ylabel="published ImageNet top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.set_xscale("log")
    from matplotlib.ticker import ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())  # 2, 3, 5 ms rather than 2 x 10^0
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    path = save_figure(fig, out)
    plt.close(fig)
    return path
