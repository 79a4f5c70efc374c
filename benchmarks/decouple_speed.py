"""CPU wall-clock speedup of decoupled (and decomposed) networks on every backend, and their accuracy.

    python benchmarks/decouple_speed.py --checkpoint runs/vgg16/best.pt \\
        --eval-data ../shared/data/cifar10 --val-subset 2000 --calibration ../shared/data/cifar10/train
    python benchmarks/decouple_speed.py --model vgg16 --resolution 224      # ImageNet shape, speed only
    # retrain the regular network first (resumes; a short CPU schedule is for mechanics only),
    # fine-tune every converted copy for one epoch, plot top-1 against ONNX Runtime latency
    python benchmarks/decouple_speed.py --train-out runs/vgg16-cpu --train-epochs 4 --width-mult 0.25 \\
        --train-subset 20000 --data-dir ../shared/data/cifar10 --eval-data ../shared/data/cifar10 \\
        --calibration ../shared/data/cifar10/train --finetune-epochs 1 --plot out/vgg16.png --json out/vgg16.json

Mult-adds lie on CPUs: a depthwise conv runs far below its mult-add count.  This
converts the network at each target reduction, then times the original and every
converted copy at batch 1 on eager PyTorch (NCHW), channels_last (BN folded, NHWC)
and ONNX Runtime (the ``mobilenets export`` of the converted model), each against
the original on the same backend; all of them take turns, in three rounds.  With ``--eval-data`` the converted models' top-1
is measured too (in PyTorch; the ONNX export is checked against it at export time),
and with ``--finetune-epochs`` again after that many epochs of ``mobilenets train
--init-from`` on ``--data-dir`` (the cifar10 recipe at a tenth of its learning rate).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import mobilenets  # noqa: E402
from mobilenets.classification.evaluate import evaluate  # noqa: E402
from mobilenets.data import calibration_images, eval_dataset, make_loader  # noqa: E402
from mobilenets.models import load_model_with_info  # noqa: E402
from mobilenets.predict import default_data_info  # noqa: E402
from mobilenets.runtimes.bench import ROUNDS, PreparedModel, time_call  # noqa: E402

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
    if calibration is not None:
        recipes += [
            (
                "loss-latency",
                "decouple, ORT latency budget, loss allocation + refine",
                lambda r: mobilenets.decouple(
                    model, target_reduction=r, budget="latency", allocation="loss", calibration=calibration, **options
                ),
            ),
            (
                "pipeline",
                "channel+spatial+decouple",
                lambda r: mobilenets.decompose(
                    model, "channel+spatial+decouple", target_reduction=r, calibration=calibration, **options
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
            # conversions with calibration take minutes each on a CPU: say what is running
            print(f"converting: {label} at {r:g}x", file=sys.stderr, flush=True)
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
    parser.add_argument("--plot", type=Path, help="top-1 against ONNX Runtime latency, one line per method")
    training = parser.add_argument_group("retraining the regular network (instead of --checkpoint)")
    training.add_argument("--train-out", type=Path, help="run folder: trained (or resumed) here, then best.pt used")
    training.add_argument("--train-epochs", type=int, default=40)
    training.add_argument("--train-subset", type=int, help="a class-balanced slice of the training images")
    training.add_argument("--width-mult", type=float, default=1.0)
    training.add_argument("--data-dir", help="labelled training images (retraining and fine-tuning)")
    training.add_argument("--device", default="cpu", help="where to train and fine-tune")
    parser.add_argument("--finetune-epochs", type=int, help="fine-tune every converted copy this long on --data-dir")
    parser.add_argument(
        "--save-dir", type=Path,
        help="write every converted copy here (fp16 safetensors, named by method and target), e.g. to fine-tune "
        "them elsewhere with 'mobilenets train --init-from'",
    )  # fmt: skip
    parser.add_argument(
        "--from-json", type=Path, action="append",
        help="print the table (and --plot) of a saved --json run, measuring nothing; given again, the runs' rows "
        "are joined under the first one's original (runs split by method over several processes)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.save_dir and args.save_dir.exists() and not args.save_dir.is_dir():
        parser.error(f"--save-dir {args.save_dir} is a file, not a folder")
    if args.from_json:
        saved = [_saved_run(path, parser) for path in args.from_json]
        args.finetune_epochs = saved[0]["args"].get("finetune_epochs")
        rows = saved[0]["rows"][:1] + [row for run in saved for row in run["rows"] if row["target"] is not None]
        return report(rows, saved[0].get("title", "model"), saved[0]["device"], args)
    torch.set_num_threads(args.threads)

    if args.train_out and not args.checkpoint:
        args.checkpoint = str(_train_regular(args))
    if args.checkpoint:
        model, info = load_model_with_info(args.checkpoint)
        info = default_data_info(model, info)
    else:
        model = mobilenets.create_model(args.model, **({"resolution": args.resolution} if args.resolution else {}))
        info = default_data_info(model)
    model.eval()
    if args.resolution:
        info = info.replace(resolution=args.resolution)
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

    if args.finetune_epochs and not (args.data_dir and batches is not None):
        parser.error("--finetune-epochs needs --data-dir (to train on) and --eval-data (to measure)")

    # the checkpoint's own architecture names the table (--model is only the random-weights choice)
    title = f"{(getattr(model, 'arch', None) or {}).get('name', args.model)} at {size[1]}x{size[2]}"
    device = f"{_cpu_name()}, torch {torch.__version__}, {args.threads} threads"

    def save(rows: list[dict]) -> None:
        """The JSON so far: accuracy rows as they are measured (a run cut off keeps them), timings at the end."""
        if args.json:
            payload = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
            rows = [{k: v for k, v in row.items() if not isinstance(v, list)} for row in rows]
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({**payload, "title": title, "device": device, "rows": rows}, indent=2))

    x = torch.randn(1, *size)
    converted = [("original", None, model, 1.0)]
    converted += [(label, r, net, report.reduction) for label, r, net, report in conversions(model, targets, calibration, size, methods)]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runners = []
        for i, (label, target, net, reduction) in enumerate(converted):
            row = {"method": label, "target": target, "reduction": reduction}
            if args.save_dir and target is not None:
                _save_copy(net, info, args.save_dir, label, target)
            if batches is not None:
                row["top1"] = _top1(net, batches, info, args.device)
            if args.finetune_epochs and target is not None:
                tuned = _finetune(net, info, args, Path(tmp) / f"ft{i}")
                row["top1_finetuned"] = _top1(tuned, batches, info, args.device)
            prepared = PreparedModel(net, info, Path(tmp), None, f"m{i}")
            for backend in BACKENDS:
                run = prepared.runner(backend, args.threads)
                for _ in range(5):
                    run(x)
                runners.append((row, backend, run))
                row[backend] = []
            rows.append(row)
            save(rows)
            print(json.dumps({k: v for k, v in row.items() if not isinstance(v, list)}), file=sys.stderr, flush=True)
        # Every configuration in turn, three rounds: a noisy machine slows all alike.
        for _ in range(ROUNDS):
            for row, backend, run in runners:
                time.sleep(0.05)
                row[backend] += [1000 * time_call(lambda: run(x)) for _ in range(-(-args.runs // ROUNDS))]
        for row, backend, _ in runners:
            row[backend] = statistics.median(row[backend])

    save(rows)
    report(rows, title, device, args)


def report(rows: list[dict], title: str, device: str, args) -> None:
    """The Markdown table, and with ``--plot`` top-1 against ONNX Runtime latency."""
    base = rows[0]
    evaluated = "top1" in base
    tuned = any("top1_finetuned" in row for row in rows)
    print(
        f"\n{title}, batch 1, {device}; median of {args.runs} runs; "
        "speedup = original's time / converted time on the same backend"
    )
    header = "| method | target | mult-adds cut | " + " | ".join(f"{b} ms (speedup)" for b in BACKENDS)
    header += " | top-1 (drop) |" if evaluated else " |"
    header += f" top-1 after {args.finetune_epochs} epoch(s) (drop) |" if tuned else ""
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for row in rows:
        # a run cut off before its timing rounds kept its accuracy rows only
        cells = [f"{row[b]:.2f} ({base[b] / row[b]:.2f}x)" if b in row and b in base else "-" for b in BACKENDS]
        top1 = " |"
        for key in ("top1", "top1_finetuned") if tuned else ("top1",) if evaluated else ():
            value = row.get(key, row["top1"])
            top1 += f" {100 * value:.2f}% ({100 * (value - base['top1']):+.2f}) |"
        target = "-" if row["target"] is None else f"{row['target']:g}x"
        print(f"| {row['method']} | {target} | {row['reduction']:.2f}x | " + " | ".join(cells) + top1)
    if args.plot and evaluated:
        from mobilenets.plots import plot_sweep

        timed = [row for row in rows[1:] if "onnxruntime" in row]  # the x axis: rows cut off before timing sit out
        if "onnxruntime" not in base or not timed:
            print(f"no plot: the runs' ONNX Runtime timings are missing ({args.plot} not written)")
            return
        results = [{**row, "label": f"{row['target']:g}x"} for row in timed]
        results += [
            {**row, "top1": row["top1_finetuned"], "label": "", "variant": f"{args.finetune_epochs} epoch fine-tuned"}
            for row in timed
            if "top1_finetuned" in row
        ]
        plot_sweep(
            results, base, args.plot, x="onnxruntime", xlabel=f"ONNX Runtime batch-1 latency (ms); {device}",
            title=f"{title}: top-1 against measured latency", labels="label",
        )  # fmt: skip
        print(f"wrote {args.plot}")


def _saved_run(path: Path, parser: argparse.ArgumentParser) -> dict:
    """One --json file as written by this script, or one line naming what is wrong with it."""
    try:
        saved = json.loads(path.read_text())
    except OSError as exc:
        parser.error(f"--from-json {path}: {exc.strerror}")
    except ValueError:
        saved = None
    if not (isinstance(saved, dict) and saved.get("rows") and {"device", "args"} <= saved.keys()):
        parser.error(f"--from-json {path}: not a decouple_speed.py --json file")
    return saved


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _train_regular(args) -> Path:
    """The regular network the conversions start from, trained by the library (resumed if
    interrupted; reused once finished)."""
    from mobilenets.train import TrainConfig, train

    if not args.data_dir:
        raise SystemExit("--train-out needs --data-dir")
    config = TrainConfig(
        model=args.model, data_dir=args.data_dir, out=str(args.train_out), recipe="cifar10",
        epochs=args.train_epochs, width_mult=args.width_mult, train_subset=args.train_subset, device=args.device,
        workers=2, **_gpu_speed(args.device),
    )  # fmt: skip
    train(config)
    return args.train_out / "best.pt"


def _gpu_speed(device: str) -> dict:
    """On a GPU, train as the ledger's GPU runs do (bf16, NHWC, CIFAR held on the device): an epoch in
    seconds rather than the half minute that decoding JPEGs on the host takes per epoch."""
    return dict(precision="bf16", channels_last=True, data_on_device=True) if device.startswith("cuda") else {}


def _save_copy(net, info, folder: Path, label: str, target: float) -> Path:
    """One converted copy as fp16 safetensors (half the bytes: what a GPU window can carry), e.g.
    ``decouple+refine_2x.safetensors``; the copy in memory stays fp32."""
    name = label.replace(" + ", "+").replace(", ", "_").replace(" ", "-") + f"_{target:g}x.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    return mobilenets.save_weights(copy.deepcopy(net).half(), folder / name, data_info=info)


def _top1(net, batches, info, device: str) -> float:
    """Top-1 on ``device`` (a GPU scores the 10,000 test images in a second), the model back on the CPU for timing."""
    top1 = evaluate(net.to(device), batches, len(info["classes"]), device)["top1"]
    net.cpu()
    return top1


def _finetune(net, info, args, out: Path):
    """``net`` after ``--finetune-epochs`` of the training pipeline, started from its saved file."""
    from mobilenets.train import TrainConfig, train

    weights = mobilenets.save_weights(net.cpu(), out.with_suffix(".safetensors"), data_info=info)
    arch = net.arch
    config = TrainConfig(
        model=arch["name"], data_dir=args.data_dir, out=str(out), recipe="cifar10", init_from=str(weights),
        epochs=args.finetune_epochs, lr=0.01, warmup_epochs=0, width_mult=arch.get("width_mult", 1.0),
        train_subset=args.train_subset, device=args.device, workers=2, **_gpu_speed(args.device),
    )  # fmt: skip
    train(config, progress=False, log=lambda *a, **k: None)
    return mobilenets.load_model(out / "last.pt").eval()


if __name__ == "__main__":
    try:
        main()
    except mobilenets.errors.MobileNetsError as exc:  # bad model name, checkpoint, data: one line, no traceback
        print(f"decouple_speed.py: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        raise SystemExit(2) from None
