"""The CIFAR-10 experiments of the training issue as one command per grid, every run an
ordinary ``mobilenets train`` run directory (so an interrupted grid resumes where it
stopped when run again):

``--grid seed`` (default)
    the seed experiment: MobileNetV2 (CIFAR strides) with ReLU vs ReLU6 at 150 epochs,
    and ReLU6 at 200 epochs with the cosine decayed until epoch 150 and until 200.
``--grid figure6``
    the V2 paper's Figure 6 on CIFAR: linear bottlenecks with shortcuts (the seed grid's
    ``relu6-150``, shared when both grids use one ``--out``), ReLU6 after each projection,
    and no shortcuts; same recipe and budget.
``--grid v1-tradeoff``
    the V1 paper's Figures 4-5 on CIFAR: MobileNetV1 at width 0.35/0.5/0.75/1.0/1.4 and
    input 32/27/23/18 (the paper's resolution multipliers 224/192/160/128 over 224), plotted
    as top-1 against mult-adds and against parameters, each point labelled.

    python benchmarks/cifar_ablation.py --out runs/cifar --seeds 0,1 --device cuda    # the real thing (GPU)
    python benchmarks/cifar_ablation.py --out runs/cifar-quick --quick                # CPU minutes, same mechanics

``--quick`` divides the epochs by 50 and trains on a 2,000-image slice: it checks the
pipeline, not the published accuracies.  Prints a Markdown table (best and final top-1
per run, mean and spread over seeds, the seed's published figures beside) and writes
``<grid>.png`` into ``--out``.  ``--report`` trains nothing and tabulates the finished runs
under ``--out`` (e.g. those a GPU window brought back), listing the others as missing;
``--only`` runs some cells (``benchmarks/gpu_window.sh grid`` starts each in its own process).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mobilenets.plots import plot_runs, plot_tradeoffs  # noqa: E402
from mobilenets.train import TrainConfig, train  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class Run:
    name: str
    model: str = "mobilenet_v2"
    epochs: int = 150
    settings: dict[str, Any] = field(default_factory=dict)  # other TrainConfig fields
    published: str = ""  # what the seed reports for this cell (lossless CIFAR-10)


SEED = [
    Run("relu-150", settings={"activation": "relu"}, published="93.37 / 92.35"),
    Run("relu6-150", settings={"activation": "relu6"}, published="93.04 / 92.67"),
    Run("relu6-200-decay150", epochs=200, settings={"activation": "relu6", "decay_epochs": 150}, published="92.47"),
    Run("relu6-200", epochs=200, settings={"activation": "relu6"}, published="92.49"),
]
FIGURE6 = [
    SEED[1],  # linear bottleneck, shortcuts: the network as published
    Run("nonlinear-bottleneck", settings={"activation": "relu6", "linear_bottleneck": False}),
    Run("no-shortcuts", settings={"activation": "relu6", "residual": False}),
]
V1_WIDTHS, V1_SIZES = (0.35, 0.5, 0.75, 1.0, 1.4), (32, 27, 23, 18)
V1_TRADEOFF = [
    Run(f"v1-{w}-{r}", model="mobilenet_v1", settings={"width_mult": w, "resolution": r})
    for w in V1_WIDTHS
    for r in V1_SIZES
]
GRIDS = {"seed": SEED, "figure6": FIGURE6, "v1-tradeoff": V1_TRADEOFF}


def config(run: Run, seed: int, args: argparse.Namespace) -> TrainConfig:
    quick, cuda = args.quick, args.device.startswith("cuda")

    def scaled(epochs: int) -> int:
        return max(1, round((epochs // 50 if quick else epochs) * args.epochs_scale))

    settings = dict(run.settings)
    if "decay_epochs" in settings:
        settings["decay_epochs"] = scaled(settings["decay_epochs"])
    return TrainConfig(
        model=run.model,
        data_dir=str(args.data_dir),
        out=str(args.out / f"{run.name}-seed{seed}"),
        recipe="cifar10",
        epochs=scaled(run.epochs),
        batch_size=64 if quick else None,
        lr=0.05 if quick else None,
        warmup_epochs=0.5 if quick else None,
        train_subset=2000 if quick else None,
        val_subset=1000 if quick else None,
        seed=seed,
        workers=1 if args.device == "cpu" else 8,
        device=args.device,
        channels_last=True,
        precision="bf16" if cuda else "fp32",
        data_on_device=cuda,
        **settings,
    )


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def tradeoff_plot(cells: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Top-1 (mean over seeds) against mult-adds and against parameters, one line per width."""
    points = [
        {"mult_adds": s[0]["mult_adds"], "params": s[0]["params"], "top1": statistics.fmean(x["top1"] for x in s),
         "label": name.removeprefix("v1-"), "width": f"width {name.split('-')[1]}"}
        for name, s in cells.items()
    ]  # fmt: skip
    return plot_tradeoffs(points, path, group="width", title="MobileNetV1 on CIFAR-10 (labels: width-input side)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", choices=list(GRIDS), default="seed")
    parser.add_argument("--data-dir", type=Path, default=SHARED / "cifar10")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds: each cell is run once per seed")
    parser.add_argument("--quick", action="store_true", help="2,000 images, epochs / 50: a CPU smoke run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs="*", help="run only these cells (names as in the table)")
    parser.add_argument(
        "--epochs-scale", type=float, default=1.0, help="multiply every run's epochs (e.g. 0.15 for a GPU-minutes form)"
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="train nothing: the table and plot of the runs already finished under --out, the others listed as missing",
    )
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [run.name for run in GRIDS[args.grid]]
    unknown = [name for name in args.only or [] if name not in names]
    if unknown:
        parser.error(f"--only: no cell {', '.join(unknown)} in the {args.grid} grid (its cells: {', '.join(names)})")
    cells: dict[str, list[dict[str, Any]]] = {}
    missing: list[str] = []
    runs = [run for run in GRIDS[args.grid] if not args.only or run.name in args.only]
    for run in runs:
        for seed in seeds:
            cfg = config(run, seed, args)
            if args.report:
                done = Path(cfg.out) / "summary.json"
                if not done.is_file():
                    missing.append(f"{run.name} seed {seed}")
                    continue
                summary = json.loads(done.read_text())
            else:
                tag = f"[{run.name} seed {seed}]"
                summary = train(cfg, progress=False, log=lambda line, tag=tag: print(f"{tag} {line}", flush=True))
            cells.setdefault(run.name, []).append({**summary, "epochs": cfg.resolved_recipe().epochs})
    print(f"\n{args.grid} grid, seeds {args.seeds}{' (quick form)' if args.quick else ''}\n")
    print("| run | epochs | best top-1 % | final top-1 % | seed's best % | mult-adds | params | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for run in runs:
        s = cells.get(run.name)
        if not s:
            print(f"| {run.name} | - | missing | missing | {run.published or '-'} | | | |")
            continue
        print(
            f"| {run.name} | {s[0]['epochs']} | {spread([x['best_top1'] for x in s])} "
            f"| {spread([x['top1'] for x in s])} | {run.published or '-'} | {s[0]['mult_adds'] / 1e6:.1f}M "
            f"| {s[0]['params'] / 1e6:.2f}M | {statistics.fmean(x['train_seconds'] for x in s):.0f} |"
        )
    if missing:
        print(f"\nmissing (not finished under {args.out}): {', '.join(missing)}")
    runs = [run for run in runs if run.name in cells]
    if not runs:
        return
    path = args.out / f"{args.grid}.png"
    if args.grid == "v1-tradeoff":
        print(f"\nwrote {tradeoff_plot(cells, path)}")
    else:
        dirs = [args.out / f"{run.name}-seed{seed}" for run in runs for seed in seeds]
        dirs = [d for d in dirs if (d / "metrics.jsonl").is_file()]
        print(f"\nwrote {plot_runs(dirs, path)}")


if __name__ == "__main__":
    main()
