"""``mobilenets bench``: inference latency per backend, beside torchvision's, as a table, JSON and PNG."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError
from ..runtimes import bench_paths
from ..validate import NON_NEGATIVE_INT, POSITIVE_INT, csv_of

EXAMPLES = """\
Examples:
  # the headline comparison: batch 1, 224x224, 1 and 2 threads
  mobilenets bench --models mobilenet_v2,mobilenet_v3_large --threads 1,2 --out bench/
  # every backend, two batch sizes, int8 calibrated on real images
  mobilenets bench --models mobilenet_v2 --backends eager,channels_last,compile,onnxruntime,onnxruntime-int8 \\
      --batch-sizes 1,8 --calibration ../shared/data/coco128/images --out bench/
  # with trained weights: top-1 of every backend (int8 included) and a latency-against-accuracy plot
  mobilenets bench --models mobilenet_v2 --backends onnxruntime,onnxruntime-int8 \\
      --weights mobilenet_v2=../shared/data/weights/mobilenet_v2-b0353104.pth \\
      --calibration ../shared/data/coco128/images --eval-data ../shared/data/imagenet-sample --out bench/
  # every CPU runtime at every precision this CPU has ([openvino,litert] extras): which is fastest here?
  mobilenets bench --models mobilenet_v2 \\
      --backends onnxruntime,onnxruntime-int8,openvino,openvino-bf16,openvino-int8,litert,litert-int8
  # the phone path beside ONNX Runtime: ExecuTorch + XNNPACK, fp32 and int8 (each export lowers ~1 min)
  mobilenets bench --models mobilenet_v2 --backends onnxruntime,onnxruntime-int8,executorch-xnnpack,executorch-xnnpack-int8
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="CPU inference latency per backend, beside torchvision's models",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Time registry models on each backend (eager, channels_last = BN folded + NHWC, compile,\n"
            "onnxruntime[-int8], openvino[-bf16|-int8] ([openvino] extra), litert[-int8] ([litert] extra),\n"
            "executorch-xnnpack[-int8] = the .pte a phone runs, here on x86; [mobile] extra) and torchvision's\n"
            "model of the same name (eager and its own ONNX export) in the same process.\n"
            "Reports median and p90 latency, throughput, the ratio to the compute floor (mult-adds / this\n"
            "CPU's measured multiply-add rate) and to torchvision's ONNX Runtime export,\n"
            "and memory: the peak resident memory of a fresh process that runs only that configuration, and how\n"
            "much its runs added to the loaded model, and ends with the fastest path measured here. Writes\n"
            "bench.txt, bench.json and bench.png to --out."
        ),
        epilog=EXAMPLES,
    )
    parser.add_argument(
        "--models", type=csv_of(), default=["mobilenet_v2"], help="comma-separated registry names (mobilenets models)"
    )
    parser.add_argument(
        "--backends",
        type=csv_of(choices=list(bench_paths())),
        default=["eager", "channels_last", "onnxruntime", "onnxruntime-int8"],
        help=f"comma-separated, from: {', '.join(bench_paths())} "
        "(default: eager, channels_last, onnxruntime, onnxruntime-int8)",
    )
    parser.add_argument("--batch-sizes", type=csv_of(POSITIVE_INT), default=[1], help="comma-separated (default 1)")
    parser.add_argument(
        "--threads", type=csv_of(POSITIVE_INT), default=[2], help="intra-op thread counts, comma-separated (default 2)"
    )
    parser.add_argument("--resolution", type=POSITIVE_INT.argtype, help="input side (default: each model's, 224)")
    parser.add_argument(
        "--runs", type=POSITIVE_INT.argtype, default=30, help="timed runs per configuration (default 30)"
    )
    parser.add_argument("--warmup", type=NON_NEGATIVE_INT.argtype, default=5, help="untimed runs first (default 5)")
    parser.add_argument("--no-reference", action="store_true", help="skip torchvision's models")
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the memory probes (one process per configuration, seconds each)"
    )
    parser.add_argument("--calibration", help="images to calibrate int8 with (default: random, latency only)")
    parser.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="MODEL=FILE",
        help="trained weights for a model (ours or torchvision's; repeat per model); without them models are "
        "untrained, which times the same but has no accuracy",
    )
    parser.add_argument("--eval-data", help="labelled images: top-1 of every backend of models given --weights")
    parser.add_argument(
        "--val-subset", type=POSITIVE_INT.argtype, help="evaluate on a class-balanced slice of N images"
    )
    parser.add_argument("--out", help="folder for bench.txt, bench.json, bench.png")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data import calibration_images
    from ..files import atomic_write
    from ..models import get_model_entry
    from ..runtimes.bench import (
        fastest_here,
        machine_description,
        plot_latency,
        results_json,
        results_table,
        run_bench,
    )
    from ..tasks import get_task

    for name in args.models:
        get_model_entry(name)  # an unknown name is refused with the nearest ones
    weights = {}
    for item in args.weights:
        model, sep, path = item.partition("=")
        if not sep or model not in args.models:
            raise ConfigError(f"--weights takes MODEL=FILE for one of --models, got {item!r}")
        weights[model] = path
    if args.eval_data and not weights:
        raise ConfigError("--eval-data needs --weights MODEL=FILE: untrained models have no accuracy to measure")
    for name in weights if args.eval_data else ():
        task = get_task(get_model_entry(name).task)
        if not task.has_classifier_body:  # found after minutes of timing, as a transform error, until refused here
            raise ConfigError(f"bench --eval-data measures top-1, and {name} is {task.noun}: 'mobilenets export "
                              "--format auto --checkpoint FILE --eval-data DIR' times and scores each runtime's file "
                              "by its task's measure (mAP, mIoU)")  # fmt: skip
    calibration = None
    if args.calibration:
        calibration = calibration_images(
            args.calibration, style="imagenet", resolution=args.resolution or 224, count=64
        )
    results = run_bench(
        args.models,
        backends=args.backends,
        batch_sizes=args.batch_sizes,
        threads=args.threads,
        resolution=args.resolution,
        runs=args.runs,
        warmup=args.warmup,
        references=not args.no_reference,
        calibration=calibration,
        weights=weights,
        eval_data=args.eval_data,
        val_subset=args.val_subset,
        memory=not args.no_memory,
        progress=lambda line: print(line, file=sys.stderr),
    )
    machine = machine_description(args.threads)
    text = results_table(results)
    rates = ", ".join(f"{t} thread(s) {r} G/s" for t, r in machine["peak_gmac_per_s"].items())
    text += f"\n{machine['cpu']}, {machine['logical_cpus']} logical CPUs; measured multiply-add peak: {rates}"
    text += "\nruntimes: " + ", ".join(f"{name} {version}" for name, version in machine["runtimes"].items())
    text += "".join("\n" + verdict for verdict in fastest_here(results))
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "bench.txt", lambda tmp: Path(tmp).write_text(text + "\n"))
        payload = json.dumps(results_json(results, machine), indent=2)
        atomic_write(out / "bench.json", lambda tmp: Path(tmp).write_text(payload))
        if any(r.median_ms for r in results):
            plot_latency(results, out / "bench.png")
        print(f"wrote {out}/bench.txt, bench.json, bench.png")
    return 0
