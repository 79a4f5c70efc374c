"""The seed's CIFAR-10 ablation as one command: ReLU vs ReLU6 at 150 and 200 epochs,
and a width-multiplier sweep, all MobileNetV2 with the ``cifar10`` recipe.

    python benchmarks/cifar_ablation.py --out runs/ablation                 # the real thing (GPU: hours)
    python benchmarks/cifar_ablation.py --out runs/ablation-quick --quick   # CPU minutes, same mechanics

Every run is an ordinary ``mobilenets train`` run directory, so an interrupted
ablation resumes where it stopped when run again.  ``--quick`` divides the
epochs by 50 and trains on a 2,000-image slice: it checks the pipeline and
shows the direction of the effects, not the published accuracies.  Prints a
Markdown table and writes ``ablation.png`` (curves and top-1 against mult-adds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mobilenets.plots import plot_runs  # noqa: E402
from mobilenets.train import TrainConfig, train  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

GRID = [  # (run name, activation, epochs, width)
    ("relu-150", "relu", 150, 1.0),
    ("relu6-150", "relu6", 150, 1.0),
    ("relu-200", "relu", 200, 1.0),
    ("relu6-200", "relu6", 200, 1.0),
    ("width-0.35", "relu6", 150, 0.35),
    ("width-0.5", "relu6", 150, 0.5),
    ("width-0.75", "relu6", 150, 0.75),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=SHARED / "cifar10")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="2,000 images, epochs / 50: a CPU smoke run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs="*", help="run only these names")
    parser.add_argument(
        "--epochs-scale", type=float, default=1.0, help="multiply every run's epochs (e.g. 0.15 for a GPU-minutes form)"
    )
    args = parser.parse_args()
    rows = []
    for name, activation, epochs, width in GRID:
        if args.only and name not in args.only:
            continue
        config = TrainConfig(
            model="mobilenet_v2",
            data_dir=str(args.data_dir),
            out=str(args.out / name),
            recipe="cifar10",
            epochs=max(1, round((epochs // 50 if args.quick else epochs) * args.epochs_scale)),
            batch_size=64 if args.quick else None,
            lr=0.05 if args.quick else None,
            warmup_epochs=0.5 if args.quick else None,
            width_mult=width,
            activation=activation,
            train_subset=2000 if args.quick else None,
            val_subset=1000 if args.quick else None,
            workers=1 if args.device == "cpu" else 8,
            device=args.device,
            channels_last=True,
            precision="bf16" if args.device.startswith("cuda") else "fp32",
            data_on_device=args.device.startswith("cuda"),
        )
        summary = train(config, progress=False, log=lambda line, name=name: print(f"[{name}] {line}", flush=True))
        rows.append((name, activation, config.resolved_recipe().epochs, width, summary))
    print("\n| run | activation | epochs | width | top-1 | best top-1 | mult-adds | params | train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, activation, epochs, width, s in rows:
        print(
            f"| {name} | {activation} | {epochs} | {width} | {100 * s['top1']:.2f}% | {100 * s['best_top1']:.2f}% "
            f"| {s['mult_adds'] / 1e6:.1f}M | {s['params'] / 1e6:.2f}M | {s['train_seconds']:.0f} |"
        )
    print(f"\nwrote {plot_runs([args.out / r[0] for r in rows], args.out / 'ablation.png')}")


if __name__ == "__main__":
    main()
