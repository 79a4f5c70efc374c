"""Does ``budget="latency"`` deliver the speedup asked for?  The whole-network search against the old rule.

    python benchmarks/latency_target.py --checkpoint runs/vgg16-cpu-full2/best.pt --eval-data ../shared/data/cifar10 \\
        --calibration ../shared/data/cifar10/train --json docs/results/latency_target_vgg16_cifar10_cpu.json

For each target, the network is converted twice in one process, so both read the same per-layer ONNX Runtime
timings (they are measured once per process, and their noise moves allocations between runs): once with the
saving searched on whole-network timings (what ``decouple`` does), once with the rule it replaced (the summed
isolated-layer times cut by the target).  Each result is timed as a whole network in ONNX Runtime and evaluated;
with ``--calibration`` also after the least-squares refit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import mobilenets.decouple.allocate as allocate  # noqa: E402
from mobilenets.classification.evaluate import evaluate  # noqa: E402
from mobilenets.data import calibration_images, eval_dataset, make_loader  # noqa: E402
from mobilenets.decouple import decouple  # noqa: E402
from mobilenets.errors import MobileNetsError  # noqa: E402
from mobilenets.models import load_model_with_info  # noqa: E402
from mobilenets.predict import default_data_info  # noqa: E402

searched = allocate.network_saving  # the rule decouple_ranks calls (swapped below)


def summed_layer_rule(model, layers, cost, total_ms, target, *args):
    """The rule before the search: the summed isolated-layer times cut by the target."""
    _, how = searched(model, layers, cost, total_ms, target, *args)  # keeps the report's whole-network 'before'
    return total_ms * (1 - 1 / target), how


def _targets(text: str) -> list[float]:
    try:
        targets = [float(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of numbers, got {text!r}") from None
    if any(t <= 1 for t in targets):
        raise argparse.ArgumentTypeError(f"each target is a speedup above 1, got {text!r}")
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a trained network (e.g. from 'mobilenets train')")
    parser.add_argument("--eval-data", required=True, help="labelled images (an ImageFolder tree or its parent)")
    parser.add_argument("--calibration", help="images for the least-squares refit (rows with 'refine')")
    parser.add_argument("--val-subset", type=int, default=2000)
    parser.add_argument("--targets", type=_targets, default="1.5,2,3", help="speedups to ask for, each > 1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.threads < 1 or args.val_subset < 1:
        parser.error(f"--threads and --val-subset must be positive, got {args.threads} and {args.val_subset}")
    torch.set_num_threads(args.threads)

    model, info = load_model_with_info(args.checkpoint)
    info = default_data_info(model, info)
    style, resolution = info["transforms"], info["resolution"]
    dataset, _ = eval_dataset(args.eval_data, style=style, resolution=resolution, subset=args.val_subset)
    batches = list(make_loader(dataset, 100, workers=2))
    classes = len(info["classes"])
    calibrations = {"plain": None}
    if args.calibration:
        calibrations["refine"] = calibration_images(args.calibration, style=style, resolution=resolution, count=256)
    rows = [{"rule": "original", "top1": evaluate(model, batches, classes)["top1"]}]
    print(json.dumps(rows[0]), flush=True)
    for target in args.targets:
        for rule, saving in (("summed layers", summed_layer_rule), ("whole network", searched)):
            allocate.network_saving = saving
            for name, calibration in calibrations.items():
                net, report = decouple(
                    model, target_reduction=target, budget="latency", calibration=calibration
                )
                network = report.extra["network_latency"]
                row = {
                    "target": target, "rule": rule, "calibration": name, "mult_adds_cut": report.reduction,
                    "network_speedup": network["before_ms"] / network["after_ms"],
                    "top1": evaluate(net, batches, classes)["top1"], "search": network["tried"],
                }  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    allocate.network_saving = searched
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))
    print("\n| target | rule | refit | mult-adds cut | ONNX Runtime speedup (whole network) | top-1 change |")
    print("|---|---|---|---|---|---|")
    for row in rows[1:]:
        change = 100 * (row["top1"] - rows[0]["top1"])
        print(
            f"| {row['target']:g}x | {row['rule']} | {row['calibration']} | {row['mult_adds_cut']:.2f}x | "
            f"{row['network_speedup']:.2f}x | {change:+.2f} |"
        )


if __name__ == "__main__":
    try:
        main()
    except MobileNetsError as exc:  # a missing checkpoint, unreadable data: one line, no traceback
        print(f"latency_target.py: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        raise SystemExit(2) from None
