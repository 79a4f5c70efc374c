"""``mobilenets decouple``: convert a trained network's regular convs, training-free, and report."""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..validate import (
    DECOMPOSITION_METHODS,
    DECOUPLE_ORDERS,
    GREATER_THAN_ONE,
    LATENCY_BACKENDS,
    POSITIVE_INT,
    UNIT_FRACTION,
    csv_of,
)
from .common import add_source_options, load_for_cli, model_source

EXAMPLES = """\
Examples:
  # halve the mult-adds of a CIFAR VGG-16 trained with 'mobilenets train', report accuracy before/after
  mobilenets decouple --checkpoint runs/vgg16/best.pt --target-reduction 2 \\
      --eval-data ../shared/data/cifar10 --out out/vgg16-nd2
  # refine with 256 unlabelled images, PW->DW order
  mobilenets decouple --checkpoint runs/vgg16/best.pt --target-reduction 3 --order pw_dw \\
      --calibration ../shared/data/cifar10/train --out out/vgg16-nd3
  # torchvision's ImageNet VGG-16 from a state dict
  mobilenets decouple --model torchvision.vgg16 --weights vgg16-397923af.pth --rank 4 --out out/vgg16-t4
  # every method at 1.5x, 2x, 3x: accuracy against mult-adds reduction, one line per method
  mobilenets decouple --checkpoint runs/vgg16/best.pt --sweep 1.5,2,3 --eval-data DIR --out out/sweep
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "decouple",
        help="turn a trained CNN's regular convs into depthwise separable ones, training-free",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Network decoupling (Guo et al. 2018): each regular k x k conv becomes T depthwise separable\n"
            "convs from per-channel SVDs (exact at T = k^2), run as one depthwise conv with channel\n"
            "multiplier T and one 1x1 conv. Writes OUT/model.safetensors (architecture recorded, so\n"
            "mobilenets.load_model rebuilds it), OUT/report.json and OUT/report.txt: per layer T, retained\n"
            "energy, relative output error, mult-adds and params before/after, CPU latency before/after\n"
            "and, with --eval-data, top-1/top-5 before/after. --method cp|tucker|spatial|channel runs the\n"
            "baselines; methods joined by '+' run one after the other on what the previous left, sharing\n"
            "--target-reduction: channel+decouple is the paper's combination, channel+spatial+decouple its\n"
            "strongest (with --calibration, every converted layer is refitted to the original after each step)."
        ),
        epilog=EXAMPLES,
    )
    add_source_options(parser)
    how = parser.add_argument_group("how much to keep (one of)")
    how.add_argument(
        "--rank", type=_rank, help="T terms per layer (T = k^2 is exact); 'full': each layer's own k^2, exact"
    )
    how.add_argument(
        "--energy", type=UNIT_FRACTION.argtype, help="per layer, keep this fraction of squared singular values"
    )
    how.add_argument(
        "--target-reduction", type=GREATER_THAN_ONE.argtype, help="divide the model's mult-adds by this factor (> 1)"
    )
    how.add_argument(
        "--sweep", type=csv_of(GREATER_THAN_ONE), help="comma-separated reductions: run every method at each and plot"
    )
    opts = parser.add_argument_group("options")
    opts.add_argument(
        "--method",
        default="decouple",
        type=_method,
        help=f"decouple (default), {', '.join(DECOMPOSITION_METHODS)}, or several joined by '+' "
        "(e.g. channel+spatial+decouple)",
    )
    opts.add_argument("--order", default="dw_pw", choices=DECOUPLE_ORDERS, help="depthwise first or pointwise first")
    opts.add_argument(
        "--allocation",
        default="greedy",
        choices=["greedy", "uniform", "loss"],
        help="ranks under a target: greedy by energy kept (default), uniform, or loss: by each rank's measured "
        "damage to the output on the --calibration images (slower; never worse there than the others)",
    )
    opts.add_argument("--budget", default="mult_adds", choices=["mult_adds", "latency"], help="what the greedy saves")
    opts.add_argument(
        "--latency-backend",
        default="onnxruntime",
        choices=LATENCY_BACKENDS,
        help="where --budget latency measures each layer (default onnxruntime)",
    )
    opts.add_argument(
        "--calibration",
        help="folder of unlabelled images: least-squares refinement (decouple), principal directions (channel)",
    )
    opts.add_argument("--calibration-images", type=POSITIVE_INT.argtype, default=256, help="how many (default 256)")
    opts.add_argument(
        "--eval-data", help="labelled images (class folders, a train/val tree or a CIFAR root): top-1/top-5"
    )
    opts.add_argument("--val-subset", type=POSITIVE_INT.argtype, help="evaluate on a class-balanced slice of N images")
    opts.add_argument("--device", default="cpu", help="where to convert and evaluate (cpu, cuda); latency is CPU")
    opts.add_argument("--out", required=True, help="output folder")
    parser.set_defaults(run=run)


def _method(text: str) -> str:
    """--method: one method, or a pipeline of them joined by '+'."""
    from ..decouple.pipeline import parse_steps

    try:
        return "+".join(parse_steps(text))
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _rank(text: str) -> int | str:
    """--rank: a positive integer, or 'full'."""
    return "full" if text == "full" else POSITIVE_INT.argtype(text)


def _accuracy(model, loader, num_classes: int) -> dict[str, float]:
    import torch

    from ..classification.evaluate import evaluate

    device = str(next(model.parameters()).device)
    nhwc = device == "cpu"  # NHWC convolutions run 1.3-1.6x faster on CPUs, with the same results
    if nhwc:
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)  # the converted copy stays NCHW
    metrics = evaluate(model, loader, num_classes, device=device, channels_last=nhwc)
    return {"top1": metrics["top1"], "top5": metrics["top5"]}


def _latencies(models: dict[str, Any], resolution: int) -> dict[str, dict[str, Any]]:
    """Each model's batch-1 CPU latency (eager, and NHWC), timed in alternating rounds so that a
    busy host slows both alike; the median with its 10th-90th percentile range, and a warning
    when that range is wide (one figure from a loaded host can be 50x off)."""
    import torch

    from ..cost.latency import WIDE_SPREAD, alternating_ms, spread

    calls = {}
    for label, model in models.items():
        x = torch.randn(1, getattr(model, "in_channels", 3), resolution, resolution)
        for layout in ("eager", "channels_last"):
            net = copy.deepcopy(model).cpu().eval()
            if layout == "channels_last":
                net = net.to(memory_format=torch.channels_last)
            calls[(label, layout)] = lambda net=net, x=x: net(x)
    with torch.no_grad():
        for call in calls.values():  # first-call allocations
            call()
        times = alternating_ms(calls, rounds=5, runs=4)
    result: dict[str, dict[str, Any]] = {label: {} for label in models}
    for (label, layout), values in times.items():
        stats = spread(values)
        result[label][f"{layout}_ms"] = round(stats["median_ms"], 2)
        result[label][f"{layout}_range"] = f"{stats['p10_ms']:.2f}-{stats['p90_ms']:.2f} ms"
        if stats["wide"]:
            print(f"warning: {label} {layout} timings ranged {stats['p10_ms']:.1f}-{stats['p90_ms']:.1f} ms "
                  f"(more than {WIDE_SPREAD}x): this host is busy; compare the ratio, or time again",
                  file=sys.stderr)  # fmt: skip
    return result


def run(args: argparse.Namespace) -> int:
    from ..files import output_dir
    from ..validate import check_device

    check_device(args.device)
    given = [name for name in ("rank", "energy", "target_reduction", "sweep") if getattr(args, name) is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of --rank, --energy, --target-reduction or --sweep")
    model, info = load_for_cli(args, "decouple")
    with output_dir(args.out) as out:
        return _run(args, model.to(args.device), info, out)


def _run(args: argparse.Namespace, model, info: dict[str, Any], out: Path) -> int:
    from ..data import calibration_images, eval_dataset, make_loader
    from ..decouple import decompose, decouple
    from ..files import atomic_write
    from ..predict import check_classes
    from ..weights import save_weights

    resolution = info["resolution"]
    size = (getattr(model, "in_channels", 3), resolution, resolution)
    loader, num_classes = None, len(info["classes"])
    if args.eval_data:
        val_set, classes = eval_dataset(
            args.eval_data, style=info["transforms"], resolution=resolution, subset=args.val_subset
        )
        check_classes(info, classes, model=model_source(args), data=args.eval_data)
        loader, num_classes = make_loader(val_set, 128, workers=2), len(classes)
    calibration = None
    if args.calibration:
        calibration = calibration_images(
            args.calibration, style=info["transforms"], resolution=resolution, count=args.calibration_images
        )
    if args.sweep:
        if loader is not None and len(loader.dataset) * size[0] * resolution**2 * 4 <= 2**31:
            loader = list(loader)  # decoded once: a sweep evaluates every method at every target
        return _sweep(args, model, size, loader, num_classes, calibration, out)
    if args.method == "decouple":
        new, report = decouple(
            model, rank=args.rank, energy=args.energy, target_reduction=args.target_reduction, order=args.order,
            calibration=calibration, allocation=args.allocation, budget=args.budget, input_size=size,
            latency_backend=args.latency_backend,
        )  # fmt: skip
    else:
        if args.energy is not None:
            raise ConfigError("--energy applies to --method decouple only")
        if calibration is not None and args.method in ("cp", "tucker", "spatial"):
            raise ConfigError("--calibration applies to --method decouple, channel and pipelines (a+b)")
        new, report = decompose(
            model, args.method, rank=args.rank, target_reduction=args.target_reduction, input_size=size,
            calibration=calibration,
        )  # fmt: skip
    timed = _latencies({"before": model, "after": new}, resolution)
    report.extra["latency_before"], report.extra["latency_after"] = timed["before"], timed["after"]
    if loader is not None:
        report.extra["accuracy_before"] = _accuracy(model, loader, num_classes)
        report.extra["accuracy_after"] = _accuracy(new, loader, num_classes)
    text = report.table()
    print(text)
    atomic_write(out / "report.txt", lambda tmp: Path(tmp).write_text(text + "\n"))
    atomic_write(out / "report.json", lambda tmp: Path(tmp).write_text(report.to_json()))
    # The architecture (registry or torchvision name) and every conversion step are
    # recorded, so mobilenets.load_model rebuilds it; never a pickled module.
    save_weights(new.cpu(), out / "model.safetensors", data_info=info)
    print(f"wrote {out}/report.txt, report.json and model.safetensors (mobilenets.load_model rebuilds it)")
    return 0


def _sweep(args, model, size, loader, num_classes: int, calibration, out: Path) -> int:
    from .._table import format_table
    from ..decouple.sweep import sweep
    from ..files import atomic_write
    from ..plots import plot_sweep

    score = (lambda network: _accuracy(network, loader, num_classes)) if loader is not None else None
    before = score(model) if score is not None else None
    rows, results = [], []

    def write() -> str:
        text = format_table(["method", "target", "mult-adds cut", "top-1", "convert s", "note"], rows)
        if before:
            text = f"original: top-1 {100 * before['top1']:.2f}%\n" + text
        atomic_write(out / "sweep.txt", lambda tmp: Path(tmp).write_text(text + "\n"))
        payload = {"before": before, "results": results}
        atomic_write(out / "sweep.json", lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2)))
        return text

    def started(name: str, target: float) -> None:
        print(f"converting: {name} at {target:g}x", file=sys.stderr, flush=True)  # CP alone takes minutes

    def finished(row) -> None:
        if row.error is not None:
            rows.append([row.method, f"{row.target:g}x", "-", "-", "", row.error[:70]])
        else:
            results.append(row.to_record())
            top1 = f"{100 * row.scores['top1']:.2f}%" if row.scores else "- (no --eval-data)"
            rows.append([row.method, f"{row.target:g}x", f"{row.reduction:.2f}x", top1, f"{row.seconds:.1f}", ""])
        write()  # a sweep can run for long: what is done so far is always on disk

    sweep(model, args.sweep, size, calibration=calibration, score=score, on_start=started, on_result=finished)
    print(write())
    if before is None:
        print(f"wrote {out}/sweep.txt, sweep.json (no plot: top-1 needs --eval-data)")
        return 0
    plot_sweep(results, before, out / "sweep.png")
    print(f"wrote {out}/sweep.txt, sweep.json, sweep.png")
    return 0
