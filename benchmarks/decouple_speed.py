"""CPU wall-clock speedup of decoupled (and decomposed) networks on every backend.

    python benchmarks/decouple_speed.py --checkpoint runs/vgg16/best.pt \\
        --eval-data ../shared/data/cifar10 --val-subset 2000 --calibration ../shared/data/cifar10/train
    python benchmarks/decouple_speed.py --model vgg16 --resolution 224      # ImageNet shape, speed only

Mult-adds lie on CPUs: a depthwise conv runs far below its mult-add count.  This
converts the network at each target reduction, then times the original and every
converted copy at batch 1 on eager PyTorch (NCHW), channels_last (BN folded, NHWC)
and ONNX Runtime (the ``mobilenets export`` of the converted model), each against
the original on the same backend; all of them take turns, in three rounds.  With ``--eval-data`` the converted models' top-1
is measured too (in PyTorch; the ONNX export is checked against it at export time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import mobilenets  # noqa: E402
from mobilenets.data import calibration_images, eval_dataset, make_loader  # noqa: E402
from mobilenets.export.bench import ROUNDS, PreparedModel, time_call  # noqa: E402
from mobilenets.predict import default_data_info  # noqa: E402
from mobilenets.train import evaluate  # noqa: E402
from mobilenets.weights import load_model_with_info  # noqa: E402

BACKENDS = ("eager", "channels_last", "onnxruntime")


def conversions(model, targets, calibration, size, methods):
    """(label, target, converted model, report) for every method and target; a method
    that cannot reach a target (e.g. a latency saving no layer choice buys) is reported and skipped."""
    options = {"input_size": size}
    recipes = [
        ("decouple", "decouple", lambda r: mobilenets.decouple(model, target_reduction=r, **options)),
        (
            "latency",
            "decouple, ORT latency budget",
            lambda r: mobilenets.decouple(model, target_reduction=r, budget="latency", **options),
        ),
    ]
    if calibration is not None:
        recipes.append(
            (
                "latency",
                "decouple, ORT latency budget + refine",
                lambda r: mobilenets.decouple(
                    model, target_reduction=r, budget="latency", calibration=calibration, **options
                ),
            )
        )
    if calibration is not None:
        recipes += [
            (
                "refine",
                "decouple + refine",
                lambda r: mobilenets.decouple(model, target_reduction=r, calibration=calibration, **options),
            ),
            (
                "channel+decouple",
                "channel+decouple",
                lambda r: mobilenets.decompose(
                    model, "channel+decouple", target_reduction=r, calibration=calibration, **options
                ),
            ),
        ]
    recipes += [
        (name, name, lambda r, name=name: mobilenets.decompose(model, name, target_reduction=r, **options))
        for name in ("cp", "tucker", "spatial")
    ]
    for r in targets:
        for key, label, convert in recipes:
            if key not in methods:
                continue
            try:
                yield (label, r, *convert(r))
            except mobilenets.ConfigError as exc:
                print(f"{label} at {r:g}x: {exc}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a trained regular network (e.g. from 'mobilenets train')")
    parser.add_argument("--model", default="vgg16", help="registry model with random weights (speed only)")
    parser.add_argument("--resolution", type=int, help="input side (default: the checkpoint's / model's)")
    parser.add_argument("--targets", default="1.5,2,3")
    parser.add_argument("--methods", default="decouple,latency,refine,channel+decouple")
    parser.add_argument("--calibration", help="images for refinement / channel decomposition")
    parser.add_argument("--eval-data", help="labelled images: top-1 of every converted model")
    parser.add_argument("--val-subset", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.checkpoint:
        model, info = load_model_with_info(args.checkpoint)
        info = default_data_info(model, info)
    else:
        model = mobilenets.create_model(args.model, **({"resolution": args.resolution} if args.resolution else {}))
        info = default_data_info(model)
    model.eval()
    if args.resolution:
        info["resolution"] = args.resolution
    size = (3, info["resolution"], info["resolution"])
    calibration = None
    if args.calibration:
        calibration = calibration_images(
            args.calibration, style=info["transforms"], resolution=info["resolution"], count=256
        )
    batches = None
    if args.eval_data:
        dataset, _ = eval_dataset(
            args.eval_data, style=info["transforms"], resolution=info["resolution"], subset=args.val_subset
        )
        batches = list(make_loader(dataset, 100, workers=2))
    targets = [float(t) for t in args.targets.split(",")]
    methods = set(args.methods.split(","))

    x = torch.randn(1, *size)
    converted = [("original", None, model, 1.0)]
    converted += [(label, r, net, report.reduction) for label, r, net, report in conversions(model, targets, calibration, size, methods)]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runners = []
        for i, (label, target, net, reduction) in enumerate(converted):
            row = {"method": label, "target": target, "reduction": reduction}
            if batches is not None:
                row["top1"] = evaluate(net, batches, len(info["classes"]))["top1"]
            prepared = PreparedModel(net, info, Path(tmp), None, f"m{i}")
            for backend in BACKENDS:
                run = prepared.runner(backend, args.threads)
                for _ in range(5):
                    run(x)
                runners.append((row, backend, run))
                row[backend] = []
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if not isinstance(v, list)}), file=sys.stderr, flush=True)
        # Every configuration in turn, three rounds: a noisy machine slows all alike.
        for _ in range(ROUNDS):
            for row, backend, run in runners:
                time.sleep(0.05)
                row[backend] += [1000 * time_call(lambda: run(x)) for _ in range(-(-args.runs // ROUNDS))]
        for row, backend, _ in runners:
            row[backend] = statistics.median(row[backend])

    base = rows[0]
    print(
        f"\n{info.get('arch', {}).get('name', args.model)} at {size[1]}x{size[2]}, batch 1, {args.threads} threads; "
        f"median of {args.runs} runs; speedup = original's time / converted time on the same backend"
    )
    header = "| method | target | mult-adds cut | " + " | ".join(f"{b} ms (speedup)" for b in BACKENDS)
    header += " | top-1 |" if batches is not None else " |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for row in rows:
        cells = [f"{row[b]:.2f} ({base[b] / row[b]:.2f}x)" for b in BACKENDS]
        top1 = f" | {100 * row['top1']:.2f}% |" if batches is not None else " |"
        target = "-" if row["target"] is None else f"{row['target']:g}x"
        print(f"| {row['method']} | {target} | {row['reduction']:.2f}x | " + " | ".join(cells) + top1)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
