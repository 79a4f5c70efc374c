"""PNG figures: training curves and accuracy against cost, in the papers' style.

matplotlib is imported lazily with the file-only Agg backend, so plotting works
on headless machines and importing mobilenets stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .files import atomic_write

__all__ = ["load_run", "plot_runs", "plot_sweep", "plot_tradeoff", "plot_tradeoffs", "pyplot", "save_figure"]


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed, none opened)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """A run directory's per-epoch metrics and summary (the summary may be missing mid-run)."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise ConfigError(f"{run_dir} is not a training run directory (no metrics.jsonl)")
    history = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return {"name": run_dir.name, "history": history, "summary": summary}


def save_figure(fig, out: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``out``, atomically."""
    out = Path(out)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    return out


def plot_tradeoff(
    ax,
    points: Sequence[dict[str, Any]],
    *,
    x: str = "mult_adds",
    y: str = "top1",
    group: str | None = None,
    colors: dict[str, str] | None = None,
):
    """Accuracy (%) against millions of mult-adds on a log axis, like the papers' Figures 4/5.

    ``points`` are dicts with ``x``, ``y``, a ``label`` and optionally ``group``
    (points of one group are joined by a line, e.g. one line per method);
    ``colors`` maps a group to its colour (e.g. a run's colour in the other panels).
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for point in points:
        groups.setdefault(point.get(group, "") if group else "", []).append(point)
    for name, members in groups.items():
        members = sorted(members, key=lambda p: p[x])
        xs, ys = [p[x] / 1e6 for p in members], [100 * p[y] for p in members]
        color = (colors or {}).get(name)
        ax.plot(xs, ys, marker="o", linestyle="-" if name else "none", label=name or None, color=color)
        for p, xv, yv in zip(members, xs, ys):
            ax.annotate(p.get("label", ""), (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel({"mult_adds": "million mult-adds", "params": "million parameters"}.get(x, x) + " (log scale)")
    ax.set_ylabel("top-1 accuracy (%)" if y == "top1" else f"{y} (%)")
    ax.grid(True, which="both", alpha=0.3)
    if group:
        ax.legend(fontsize=8)


def plot_final_scores(ax, runs: Sequence[dict[str, Any]], *, metric: str, colors: dict[str, str], name: str) -> None:
    """A bar per finished run of its final ``metric`` (% of ``name``, e.g. "mAP@[.5:.95]"), labelled: how runs of
    one network (seeds, settings) compare, where an accuracy-against-cost panel would stack them on one point."""
    labels, scores = [r["label"] for r in runs], [100 * r[metric] for r in runs]
    bars = ax.barh(range(len(runs)), scores, color=[colors.get(label) for label in labels])
    ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=3)
    ax.set_xlim(0, 1.15 * max(scores) or 1)  # room for the figures beside the bars (1: every score 0)
    ax.set_yticks(range(len(runs)), labels, fontsize=7)
    ax.invert_yaxis()  # the first run on top, as in the legends
    ax.set_xlabel(f"final {name} (%)")
    ax.set_title(f"final score ({runs[0]['mult_adds'] / 1e6:.0f}M mult-adds each)")
    ax.grid(True, axis="x", alpha=0.3)


def plot_tradeoffs(
    points: Sequence[dict[str, Any]], out: str | Path, *, group: str | None = None, title: str = ""
) -> Path:
    """One PNG of two panels: accuracy against mult-adds and against parameters (log axes),
    each point labelled - the papers' Figures 4-5, the picture for choosing a model size.
    ``points`` as for :func:`plot_tradeoff`, with both ``mult_adds`` and ``params``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, x in zip(axes, ("mult_adds", "params")):
        plot_tradeoff(ax, points, x=x, group=group)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = save_figure(fig, out)
    plt.close(fig)
    return path


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, *, x: str = "epoch") -> Path:
    """One PNG: training loss and validation top-1 per epoch (``x="minutes"``: against
    the training time so far, to compare runs at equal cost; ``x="wall"``: against the
    wall-clock since the run began, set-up, data decoding and validation included - a
    time-to-accuracy curve) for each run, and final top-1 against mult-adds across the
    runs that have finished (a bar each where they are all one network: seeds, settings)."""
    if x not in ("epoch", "minutes", "wall"):
        raise ConfigError(f"x must be 'epoch', 'minutes' or 'wall', got {x!r}")
    runs = [load_run(d) for d in run_dirs]
    if x == "wall":
        for run in runs:
            if any("wall_seconds" not in h for h in run["history"]):
                raise ConfigError(f"{run['name']} records no wall-clock times (trained by an older version); "
                                  "plot it against training minutes instead")  # fmt: skip
    # classifiers report top-1, detectors COCO mAP, segmenters mIoU (all fractions); one kind per plot
    # (epochs trained without a validation pass, --eval-every, carry no metric)
    kinds = {next((k for k in ("top1", "map", "miou") if k in h), None) for run in runs for h in run["history"]}
    kinds.discard(None)
    if len(kinds) > 1:
        raise ConfigError("plot runs of one task together: these mix classifiers, detectors and segmenters")
    metric = kinds.pop() if kinds else "top1"
    name = {"top1": "top-1", "map": "mAP@[.5:.95]", "miou": "mIoU"}[metric]
    secondary = {"map": ("map50", "mAP50"), "miou": ("pixel_acc", "pixel acc")}.get(metric)
    plt = pyplot()
    fig, (loss_ax, acc_ax, cost_ax) = plt.subplots(1, 3, figsize=(16, 4.5))
    colors = {run["name"]: f"C{i % 10}" for i, run in enumerate(runs)}  # one colour per run, in every panel
    for run in runs:
        if x == "epoch":
            epochs = [h["epoch"] for h in run["history"]]
        elif x == "wall":
            epochs = [h["wall_seconds"] / 60 for h in run["history"]]
        else:  # cumulative training minutes at the end of each epoch
            epochs = [sum(e["train_seconds"] for e in run["history"][: i + 1]) / 60 for i in range(len(run["history"]))]
        color = colors[run["name"]]
        # markers on every line: a 1-epoch run is a single point, which a line alone does not draw
        loss_ax.plot(epochs, [h["train_loss"] for h in run["history"]], color=color, marker="o",
                     label=f"{run['name']} train")  # fmt: skip
        scored = [(e, h) for e, h in zip(epochs, run["history"]) if metric in h]
        at = [e for e, _ in scored]
        if scored and all("loss" in h for _, h in scored):
            val_loss = [h["loss"] for _, h in scored]
            loss_ax.plot(at, val_loss, color=color, linestyle="--", marker="s", label=f"{run['name']} val")
        acc_ax.plot(at, [100 * h[metric] for _, h in scored], color=color, marker="o", label=run["name"])
        if secondary:  # mAP50 beside a detector's mAP, pixel accuracy beside a segmenter's mIoU
            values = [100 * h.get(secondary[0], float("nan")) for _, h in scored]
            acc_ax.plot(at, values, color=color, linestyle=":", marker="^", label=f"{run['name']} {secondary[1]}")
    xlabel = {"epoch": "epoch", "minutes": "training minutes", "wall": "wall-clock minutes"}[x]
    loss_ax.set(xlabel=xlabel, ylabel="training loss (val dashed)", title="loss")
    acc_ax.set(xlabel=xlabel, ylabel=f"{name} (%)", title=f"validation {name}")
    for ax in (loss_ax, acc_ax):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    finished = [
        {"mult_adds": r["summary"]["mult_adds"], metric: r["summary"][metric], "label": r["name"]}
        for r in runs
        if r["summary"].get("mult_adds") and r["summary"].get(metric) is not None
    ]
    if len({r["mult_adds"] for r in finished}) == 1:  # one network trained several ways: cost says nothing
        plot_final_scores(cost_ax, finished, metric=metric, colors=colors, name=name)
    else:
        if finished:
            plot_tradeoff(cost_ax, finished, group="label", colors=colors, y=metric)
        else:
            cost_ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=cost_ax.transAxes)
        cost_ax.set_title("accuracy against cost")
    fig.tight_layout()
    path = save_figure(fig, out)
    plt.close(fig)
    return path


def plot_sweep(
    results: Sequence[dict[str, Any]],
    before: dict[str, float] | None,
    out: str | Path,
    *,
    x: str = "reduction",
    xlabel: str = "mult-adds reduction (x)",
    title: str = "training-free compression",
    labels: str | None = None,
) -> Path:
    """Top-1 against ``x`` (default the mult-adds reduction reached), one line per
    compression method (``results``: dicts with ``method``, ``x`` and ``top1``; an
    optional ``variant``, e.g. "fine-tuned", is drawn dashed in its method's colour);
    the original as a dotted line, or as a star where it has an ``x`` of its own
    (``before[x]``, e.g. its latency); ``labels`` names a key written beside each point."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    colours = {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(r["method"] for r in results))}
    markers = "osD^v<>ph*"
    for i, (name, variant) in enumerate(dict.fromkeys((r["method"], r.get("variant")) for r in results)):
        chosen = [r for r in results if r["method"] == name and r.get("variant") == variant]
        points = sorted((r[x], 100 * r["top1"], r.get(labels, "")) for r in chosen)
        index = list(colours).index(name)
        ax.plot(
            [p[0] for p in points], [p[1] for p in points], color=colours[name], marker=markers[index // 10 % 10],
            linestyle="--" if variant else "-", alpha=0.6 if variant else 1.0,
            label=f"{name}, {variant}" if variant else name,
        )  # fmt: skip
        for px, py, text in points if labels else ():
            ax.annotate(str(text), (px, py), textcoords="offset points", xytext=(3, 3), fontsize=7, color=colours[name])
    if before and x in before:
        ax.plot(
            [before[x]],
            [100 * before["top1"]],
            marker="*",
            markersize=13,
            color="black",
            linestyle="",
            label="original",
        )
    elif before:
        ax.axhline(100 * before["top1"], color="gray", linestyle=":", label="original")
    ax.set(xlabel=xlabel, ylabel="top-1 (%)", title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    path = save_figure(fig, out)
    plt.close(fig)
    return path
