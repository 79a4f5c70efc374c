"""Quantization-aware training against post-training quantization, on a trained checkpoint.

    # a float run, then quantization-aware fine-tuning from it (both through the CLI)
    mobilenets train --model mobilenet_v2 --width-mult 0.5 --recipe cifar10-quick \\
        --data-dir ../shared/data/cifar10 --train-subset 10000 --val-subset 2000 --out runs/base
    mobilenets train --model mobilenet_v2 --width-mult 0.5 --recipe cifar10-qat --qat \\
        --init-from runs/base/best.pt --data-dir ../shared/data/cifar10 --train-subset 10000 \\
        --val-subset 2000 --out runs/qat
    python benchmarks/qat_accuracy.py --base runs/base/best.pt --qat runs/qat/best.pt \\
        --data-dir ../shared/data/cifar10 [--calibration-images 256] [--json out.json]

Top-1 on the whole validation split (CIFAR-10: 10,000 test images) of:

* the float checkpoint (PyTorch);
* its post-training int8 export with the default steps (percentile ranges, GPTQ,
  float logits, range search), calibrated on training images;
* the QAT starting point: ``prepare_qat`` of the float checkpoint exported as it is
  (what QAT would ship after zero steps);
* the QAT checkpoint in PyTorch (the simulation) and its int8 export (learned ranges,
  no calibration) in ONNX Runtime.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mobilenets._table import format_table  # noqa: E402
from mobilenets.classification.evaluate import evaluate  # noqa: E402
from mobilenets.data import build_datasets, calibration_images, make_loader  # noqa: E402
from mobilenets.export import OnnxClassifier, export_onnx, quantize_onnx  # noqa: E402
from mobilenets.export.qat import export_int8, prepare_qat  # noqa: E402
from mobilenets.models import load_model_with_info  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the float checkpoint")
    parser.add_argument("--qat", required=True, help="the checkpoint of 'mobilenets train --qat --init-from BASE'")
    parser.add_argument("--data-dir", required=True, help="an ImageFolder tree with train/ and val/ or test/")
    parser.add_argument("--val-subset", type=int, help="evaluate on a class-balanced slice (default: all)")
    parser.add_argument("--calibration-images", type=int, default=256, help="training images for PTQ (256)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()

    base, info = load_model_with_info(args.base)
    qat_model, _ = load_model_with_info(args.qat)
    _, val_set, classes = build_datasets(
        args.data_dir, style=info["transforms"], resolution=info["resolution"], val_subset=args.val_subset
    )
    batches = list(make_loader(val_set, 250, workers=2))
    # PTQ calibration: training images evenly spread over the sorted files, without augmentation.
    calibration = calibration_images(
        Path(args.data_dir) / "train",
        style=info["transforms"],
        resolution=info["resolution"],
        count=args.calibration_images,
    )

    rows = []

    def score(name: str, runner, seconds: float | None = None) -> None:
        top1 = evaluate(runner, batches, len(classes))["top1"]
        rows.append({"model": name, "top1": top1, "seconds": seconds})
        print(f"{name}: {100 * top1:.2f}%", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        score("float checkpoint (PyTorch)", base)
        export_onnx(base, tmp / "base.onnx", info=info)
        started = time.perf_counter()
        quantize_onnx(tmp / "base.onnx", tmp / "ptq.onnx", calibration, model=base)
        score(
            "post-training int8 (default steps, ONNX Runtime)",
            OnnxClassifier(tmp / "ptq.onnx"),
            time.perf_counter() - started,
        )
        started = time.perf_counter()
        start = prepare_qat(base, calibration)
        export_int8(start, tmp / "start.onnx", info=info, probe=calibration[:2])
        score(
            "QAT starting point, no training (ONNX Runtime int8)",
            OnnxClassifier(tmp / "start.onnx"),
            time.perf_counter() - started,
        )
        score("QAT checkpoint (PyTorch simulation)", qat_model)
        export_int8(qat_model, tmp / "qat.onnx", info=info, probe=calibration[:2])
        score("QAT checkpoint int8 (learned ranges, ONNX Runtime)", OnnxClassifier(tmp / "qat.onnx"))

    print()
    print(
        format_table(
            ["model", "top-1 %", "quantize s"],
            [
                [r["model"], f"{100 * r['top1']:.2f}", "" if r["seconds"] is None else f"{r['seconds']:.0f}"]
                for r in rows
            ],
        )
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"images": len(val_set), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
