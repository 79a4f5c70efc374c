"""int8 accuracy step by step: what each post-training quantization step buys.

    python benchmarks/int8_accuracy.py --weights ../shared/data/weights/mobilenet_v2-b0353104.pth \\
        --calibration ../shared/data/coco128/images --eval-data ../shared/data/imagenet-sample \\
        [--model mobilenet_v2] [--calibration-images 200] [--json out.json] [--search-sizes 64x1,64x2,128x2]

Starting from ONNX Runtime's defaults (MinMax ranges, 8-bit weights rounded to
nearest), each row adds one step of :func:`mobilenets.export.quantize_onnx` and
reports, on the labelled evaluation images: top-1 and top-5, how often the int8
model's top-1 agrees with the fp32 model's, and the mean KL divergence of the int8
softmax from the fp32 softmax (smaller is closer; it moves less by chance than
top-1 on 1,000 images).  Calibration images should not be evaluation images.
``--search-sizes IMAGESxSWEEPS,...`` replaces the steps by the range search at each
size (after the unsearched default), to weigh its cost against its gain.
The last lines time the fp32 export and the default int8 model side by side
(batch 1, in alternating rounds).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mobilenets import create_model  # noqa: E402
from mobilenets._table import format_table  # noqa: E402
from mobilenets.cost.latency import median_ms  # noqa: E402
from mobilenets.data import calibration_images, eval_dataset, make_loader  # noqa: E402
from mobilenets.export import OnnxClassifier, export_onnx, quantize_onnx  # noqa: E402
from mobilenets.export.quantize import QuantizeOptions, needs_reduced_range  # noqa: E402
from mobilenets.predict import default_data_info  # noqa: E402
from mobilenets.weights import load_weights  # noqa: E402

# Cumulative: each step keeps the ones above it.
EARLY = dict(float_outputs=False, range_search=False)
GPTQ = dict(method="percentile", reduce_range=True, weight_rounding="gptq")
# The export's own search size, read from its options, so that this row's name says what it ran.
_EXPORT = QuantizeOptions()
SEARCH = (_EXPORT.range_search_images, _EXPORT.range_search_sweeps)
DEFAULT = f"+ range search against the output (the default: {SEARCH[0]} images x {SEARCH[1]} sweeps)"
STEPS = [
    ("ONNX Runtime defaults (MinMax, 8-bit weights)", dict(method="minmax", reduce_range=False)),
    ("+ percentile ranges (99.99, per tensor)", dict(method="percentile", reduce_range=False)),
    ("+ 7-bit weights (no VNNI)", dict(method="percentile", reduce_range=True, full_range_depthwise=False)),
    ("+ 8-bit depthwise weights", dict(method="percentile", reduce_range=True)),
    ("+ GPTQ rounding", GPTQ),
    ("+ float logits", dict(GPTQ, float_outputs=True)),
    (DEFAULT, dict(GPTQ, float_outputs=True, range_search=True)),
    ("+ bias correction (not default)", dict(GPTQ, float_outputs=True, range_search=True, bias_correction=True)),
]


def search_steps(sizes: str) -> list[tuple[str, dict]]:
    """The unsearched default, then the range search at each IMAGESxSWEEPS size."""
    steps = [("float logits, no range search", dict(GPTQ, float_outputs=True))]
    for size in sizes.split(","):
        images, sweeps = (int(n) for n in size.lower().split("x"))
        name = DEFAULT if (images, sweeps) == SEARCH else f"+ range search, {images} images x {sweeps} sweeps"
        options = dict(GPTQ, float_outputs=True, range_search=True)
        steps.append((name, dict(options, range_search_images=images, range_search_sweeps=sweeps)))
    return steps


def logits_of(runner, batches) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([runner(images) for images, _ in batches]).float()


def compare(logits: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    top5 = logits.topk(5, dim=1).indices
    kl = torch.nn.functional.kl_div(
        logits.log_softmax(1), reference.log_softmax(1), log_target=True, reduction="batchmean"
    )
    return {
        "top1": 100 * (top5[:, 0] == labels).float().mean().item(),
        "top5": 100 * (top5 == labels[:, None]).any(1).float().mean().item(),
        "agree": 100 * (logits.argmax(1) == reference.argmax(1)).float().mean().item(),
        "kl": kl.item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--weights", required=True, help="ImageNet weights (ours or torchvision's)")
    parser.add_argument("--calibration", required=True, help="folder of images for ranges and corrections")
    parser.add_argument("--calibration-images", type=int, default=200)
    parser.add_argument("--eval-data", required=True, help="labelled images, one folder per class")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds of the last comparison")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--search-sizes", help="compare range-search sizes instead, e.g. 64x1,64x2,128x2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = create_model(args.model)
    load_weights(model, args.weights)
    model.eval()
    info = default_data_info(model, {})
    style, resolution = info["transforms"], info["resolution"]
    calibration = calibration_images(
        args.calibration, style=style, resolution=resolution, count=args.calibration_images
    )
    dataset, classes = eval_dataset(args.eval_data, style=style, resolution=resolution)
    batches = list(make_loader(dataset, 50, workers=2))
    labels = torch.cat([y for _, y in batches])

    rows, results = [], []
    with tempfile.TemporaryDirectory() as workdir:
        fp32_path = Path(workdir) / "fp32.onnx"
        export_onnx(model, fp32_path, info=info)
        fp32 = OnnxClassifier(fp32_path, threads=args.threads)
        reference = logits_of(fp32, batches)
        scores = compare(reference, reference, labels)
        rows.append(["fp32 (ONNX Runtime)", f"{scores['top1']:.1f}", f"{scores['top5']:.1f}", "100.0", "0", "-"])
        results.append({"step": "fp32", **scores})
        int8_path = Path(workdir) / "int8.onnx"
        default_path = int8_path.with_name("default.onnx")
        for name, options in search_steps(args.search_sizes) if args.search_sizes else STEPS:
            options = {"weight_rounding": "nearest", "bias_correction": False, **EARLY, **options}
            start = time.perf_counter()
            quantize_onnx(fp32_path, int8_path, calibration, model=model, **options)
            seconds = time.perf_counter() - start
            scores = compare(logits_of(OnnxClassifier(int8_path, threads=args.threads), batches), reference, labels)
            rows.append([name, f"{scores['top1']:.1f}", f"{scores['top5']:.1f}", f"{scores['agree']:.1f}",
                         f"{scores['kl']:.4f}", f"{seconds:.0f}"])  # fmt: skip
            results.append({"step": name, "options": options, "seconds": seconds, **scores})
            print(f"{name}: top-1 {scores['top1']:.1f}%", flush=True)
            if name == DEFAULT or not default_path.exists():
                default_path.write_bytes(int8_path.read_bytes())

        image = calibration[:1].float()
        runners = {"fp32": OnnxClassifier(fp32_path, threads=args.threads),
                   "int8": OnnxClassifier(default_path, threads=args.threads)}  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, runner in runners.items():
                times[name].append(median_ms(lambda runner=runner: runner(image), runs=20))
        latency = {name: sorted(t)[len(t) // 2] for name, t in times.items()}

    print()
    print(f"{args.model}, calibration: {len(calibration)} images from {args.calibration}; "
          f"evaluation: {len(labels)} images from {args.eval_data}; 7-bit dense weights needed here: "
          f"{needs_reduced_range()}")  # fmt: skip
    print(format_table(["step", "top-1 %", "top-5 %", "agrees with fp32 %", "KL to fp32", "quantize s"], rows))
    ratio = latency["int8"] / latency["fp32"]
    print(f"latency, batch 1, {args.threads} threads: fp32 {latency['fp32']:.2f} ms, "
          f"int8 (the default) {latency['int8']:.2f} ms = {ratio:.2f}x")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "steps": results, "latency_ms": latency}, indent=2))


if __name__ == "__main__":
    main()
