"""``mobilenets export``: ONNX (BN folded, checked against PyTorch), optionally int8."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..runtimes import export_formats, format_for_file, list_runtimes
from ..validate import (
    CALIBRATION_METHODS,
    NON_NEGATIVE_INT,
    PERCENTILE,
    POSITIVE_INT,
    PT2E_CALIBRATION_METHODS,
    WEIGHT_ROUNDING,
    csv_of,
)
from .common import add_random_weights_option, add_source_options, load_for_cli, model_source, require_weights
from .task_commands import Scoring

EXAMPLES = """\
Examples:
  # torchvision's ImageNet MobileNetV2 weights into our model, exported with a dynamic batch
  mobilenets export --model mobilenet_v2 --weights ../shared/data/weights/mobilenet_v2-b0353104.pth \\
      --out mnv2.onnx --dynamic-batch
  # the same, int8 (calibrated on 200 other photos), with fp32 vs int8 top-1 on labelled images
  mobilenets export --model mobilenet_v2 --weights ../shared/data/weights/mobilenet_v2-b0353104.pth \\
      --out mnv2-int8.onnx --int8 --calibration ../shared/data/coco128/images \\
      --eval-data ../shared/data/imagenet-sample
  # a checkpoint from 'mobilenets train' (class names and CIFAR preprocessing travel with it)
  mobilenets export --checkpoint runs/quick/best.pt --out cifar.onnx
  # a quantization-aware checkpoint ('mobilenets train --qat'): int8 with its learned ranges
  mobilenets export --checkpoint runs/qat/best.pt --out cifar-int8.onnx --int8
  # a detector: the network and its box decoding (boxes, scores); NMS is applied after it
  mobilenets export --checkpoint runs/det-v2/best.pt --out ssdlite.onnx
  # the fastest detector file here whose COCO mAP on labelled images stays within 0.5 points of PyTorch's
  mobilenets export --format auto --checkpoint runs/det-v2/best.pt --out ssdlite --eval-data ../shared/data/coco128
  # then
  mobilenets predict --onnx mnv2.onnx photo.jpg
  # for a phone: an ExecuTorch program delegated to XNNPACK (int8 through PT2E), checked in ExecuTorch's runtime
  mobilenets export --format executorch --model mobilenet_v2 --weights ../shared/data/weights/mobilenet_v2-b0353104.pth \\
      --out mnv2-int8.pte --int8 --calibration ../shared/data/coco128/images --eval-data ../shared/data/imagenet-sample
  mobilenets predict --pte mnv2-int8.pte photo.jpg
  # OpenVINO int8 (our calibrated model, converted), and LiteRT fp32; predict/eval read any of them
  mobilenets export --format openvino --model mobilenet_v2 --weights ../shared/data/weights/mobilenet_v2-b0353104.pth \\
      --out mnv2-int8.xml --int8 --calibration ../shared/data/coco128/images
  mobilenets export --format litert --model mobilenet_v2 --weights ../shared/data/weights/mobilenet_v2-b0353104.pth \\
      --out mnv2.tflite
  mobilenets eval --exported mnv2-int8.xml --data-dir ../shared/data/imagenet-sample
  # the fastest file for this machine within 0.5 points of fp32 (writes mnv2-fast.<its suffix>)
  mobilenets export --format auto --model mobilenet_v2 --weights ../shared/data/weights/mobilenet_v2-b0353104.pth \\
      --out mnv2-fast --calibration ../shared/data/coco128/images --eval-data ../shared/data/imagenet-sample
"""


DESCRIPTION = (
    "Export a model to the file a runtime loads, with batch norm folded into the convs. Every file\n"
    "is run by its runtime and compared with PyTorch before it is written (an export off by more\n"
    "than 1e-3 in fp32 fails), and carries its class names and preprocessing, so 'mobilenets\n"
    "predict/eval --exported FILE' need nothing else. --format (default: the one whose file --out\n"
    "names - .onnx, .pte, .xml, .tflite):\n"
    "  onnx            ONNX Runtime, opset >= 17;\n"
    "  executorch      the .pte an Android/iOS app loads (XNNPACK; batch 1; [mobile] extra);\n"
    "  openvino        OpenVINO's IR, .xml + .bin; fp32, bf16 where the CPU has AVX-512 BF16 or AMX,\n"
    "                  int8 ([openvino] extra);\n"
    "  litert          a .tflite for LiteRT (TensorFlow Lite) with XNNPACK ([litert] extra);\n"
    "  auto            time every installed runtime x precision here and write the fastest whose\n"
    "                  score (top-1; a detector's mAP, a segmenter's mIoU, on --eval-data) stays\n"
    "                  within --tolerance of PyTorch's, printing the table it chose from; a detector\n"
    "                  or segmenter without --eval-data gets the fastest fp32 file.\n"
    "executorch and litert write <out>.pte.json / <out>.tflite.json beside the file.\n\n"
    "--int8: post-training static quantization on --calibration images. ONNX (and OpenVINO, which\n"
    "converts the same QDQ model): int8 per-channel weights rounded with GPTQ, uint8 activations cut\n"
    "at the 99.99th percentile, ranges then searched against fp32's output - the int8 options below.\n"
    "ExecuTorch and LiteRT: PT2E quantization with their own quantizers (both take\n"
    "--calibration-method/--calibration-percentile; LiteRT also --distill-steps, which fits the int8\n"
    "weights to fp32's outputs); an option a format does not take is refused.\n"
    "A checkpoint from 'mobilenets train --qat' needs no calibration: its int8 ranges were trained.\n\n"
    "Beside the file, <out>.export.json records what was exported: the paths, the error against\n"
    "PyTorch and, with --eval-data, each form's score: top-1 (mAP for a detector, mIoU for a segmenter)."
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX, ExecuTorch, OpenVINO or LiteRT (or the fastest here: --format auto), "
        "checked against PyTorch, optionally int8",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    add_source_options(parser)
    add_random_weights_option(parser, "export")
    opts = parser.add_argument_group("export")
    opts.add_argument(
        "--format",
        choices=[*export_formats(), "auto"],
        help="default: the one --out's suffix names (.pte executorch, .xml openvino, .tflite litert), else onnx; "
        "onnx (ONNX Runtime), executorch (the .pte an Android/iOS app runs through XNNPACK), "
        "openvino (OpenVINO's IR, .xml + .bin; [openvino] extra), litert (.tflite; [litert] extra), or auto: "
        "time every installed runtime x precision here and write the fastest whose score stays within "
        "--tolerance of PyTorch's (--out is then a name without suffix; the chosen runtime's is added)",
    )
    opts.add_argument("--out", required=True, help="the file to write: .onnx, .pte (executorch), .xml (openvino) or "
                      ".tflite (litert); with --format auto a name without suffix")  # fmt: skip
    opts.add_argument(
        "--precision",
        choices=["fp32", "bf16", "int8"],
        help="what the file computes in (default fp32; --int8 is --precision int8); bf16: OpenVINO on a CPU with "
        "AVX-512 BF16 or AMX, refused where the CPU lacks it",
    )
    opts.add_argument("--dynamic-batch", action="store_true", help="let the batch size vary at run time")
    opts.add_argument("--opset", type=POSITIVE_INT.argtype, default=17, help="ONNX opset (17 to 20; default 17)")
    add_auto_options(parser)
    add_int8_options(parser)
    check = parser.add_argument_group("accuracy")
    check.add_argument("--eval-data", help="labelled images, as the model's task reads them (class folders or a "
                       "train/val tree: top-1; a YOLO/COCO set: mAP; masks: mIoU): report each form's "
                       "score")  # fmt: skip
    check.add_argument("--val-subset", type=POSITIVE_INT.argtype, help="score N images (a classifier's: a "
                       "class-balanced slice; otherwise the first N)")  # fmt: skip
    # --format onnx takes the ONNX flags, another runtime those its export_options name; run() refuses
    # the rest of FORMAT_FLAGS rather than ignore them
    auto_only = ["--tolerance", "--runtimes", "--threads"]
    parser.set_defaults(run=run, format_flags=_defaults(parser, FORMAT_FLAGS), auto_only=_defaults(parser, auto_only))


def add_int8_options(parser: argparse.ArgumentParser) -> None:
    """The int8 group: calibration, how ranges are chosen, weight rounding, the range search and LiteRT's fit."""
    quant = parser.add_argument_group("int8")
    quant.add_argument(
        "--int8", action="store_true", help="quantize to int8; needs --calibration unless the checkpoint is from --qat"
    )
    quant.add_argument("--calibration", help="folder of representative images (any layout, labels unused)")
    quant.add_argument(
        "--calibration-images", type=POSITIVE_INT.argtype, default=200, help="how many to use (default 200)"
    )
    quant.add_argument(
        "--calibration-method",
        default="percentile",
        choices=list(dict.fromkeys([*CALIBRATION_METHODS, *PT2E_CALIBRATION_METHODS])),
        help="how activation ranges are chosen (default percentile, every format); entropy is ONNX's (and "
        "OpenVINO's), histogram (PT2E's own L2-minimising choice) ExecuTorch's and LiteRT's",
    )
    quant.add_argument(
        "--calibration-percentile",
        type=PERCENTILE.argtype,
        default=99.99,
        help="percentile method: where each activation range is cut (default 99.99; measured best on MobileNetV2, "
        "and sharp: 99.95 and 99.999 were both worse)",
    )
    quant.add_argument(
        "--distill-steps",
        type=NON_NEGATIVE_INT.argtype,
        metavar="N",
        default=0,
        help="litert: after calibration, train the int8 network's weights for N batches of the calibration images to "
        "give the fp32 network's outputs (no labels; default 0: off). 300 took MobileNetV2's LiteRT int8 from 82.4 "
        "to 83.5 %% top-1 (fp32 83.8) on an AVX-512 CPU, at about 2 s a step on 2 cores (docs/benchmarks.md)",
    )
    quant.add_argument(
        "--weight-rounding",
        default="gptq",
        choices=WEIGHT_ROUNDING,
        help="gptq: round dense weights with error feedback on the calibration images (default); "
        "nearest: plain rounding",
    )
    quant.add_argument(
        "--bias-correction",
        default=False,
        action=argparse.BooleanOptionalAction,
        help="cancel each layer's int8 mean shift, measured on the calibration images (default off: "
        "it did not help MobileNetV2 on top of the default ranges and rounding)",
    )
    quant.add_argument(
        "--range-search",
        default=True,
        action=argparse.BooleanOptionalAction,
        help="rescale each activation range to bring the int8 network's output closest to fp32's on the "
        "first --range-search-images calibration images (default on: 9-16 %% less KL to fp32 on unseen images "
        "across the CPUs measured, +0.7 points of MobileNetV2's top-1 on one, none on another; about 12 s on 2 "
        "cores at the default size; docs/benchmarks.md)",
    )
    quant.add_argument(
        "--range-search-images",
        type=POSITIVE_INT.argtype,
        default=16,
        help="calibration images the range search uses (default 16: as close to fp32 as 64 images with 2 "
        "sweeps, in a sixth of the time; docs/benchmarks.md)",
    )
    quant.add_argument(
        "--range-search-sweeps",
        type=POSITIVE_INT.argtype,
        default=1,
        help="passes over all activation tensors (default 1; each costs the same, a second gains little)",
    )


# How the ONNX int8 model is made (QuantizeOptions): the ONNX file's, OpenVINO's int8 (converted
# from it) and auto's ONNX Runtime and OpenVINO candidates
QUANTIZE_FLAGS = ["--calibration-method", "--calibration-percentile", "--weight-rounding", "--bias-correction",
                  "--range-search", "--range-search-images", "--range-search-sweeps"]  # fmt: skip
ONNX_FLAGS = ["--dynamic-batch", "--opset", *QUANTIZE_FLAGS]
# Every flag some --format refuses: the ONNX file's, and LiteRT's fit of PT2E int8 to fp32
FORMAT_FLAGS = [*ONNX_FLAGS, "--distill-steps"]
# A runtime's export keywords (Runtime.export_options): the flags each takes, and its value from them
EXPORT_OPTIONS = {
    "calibration_method": (["--calibration-method"], lambda args: args.calibration_method),
    "percentile": (["--calibration-percentile"], lambda args: args.calibration_percentile),
    "distill_steps": (["--distill-steps"], lambda args: args.distill_steps),
    "quantize": (QUANTIZE_FLAGS, lambda args: quantize_options(args)),
}


def taken_flags(file_format: str, runtime: Any) -> list[str]:
    """The export flags ``--format file_format`` takes (of FORMAT_FLAGS): the ONNX ones for onnx, the int8
    options for auto (they make its ONNX int8 model), else those of the runtime's export_options."""
    if file_format == "onnx":
        return ONNX_FLAGS
    if file_format == "auto":
        return QUANTIZE_FLAGS
    return [flag for option in runtime.export_options for flag in EXPORT_OPTIONS[option][0]]


def refuse_untaken_flags(args: argparse.Namespace, taken: list[str]) -> None:
    """One line for the first export flag given that ``--format`` does not take (rather than ignore it)."""
    refused = [flag for flag in given(args, args.format_flags) if flag not in taken]
    if refused:
        takes = f"{args.format} takes {', '.join(sorted(taken))}" if taken else f"{args.format} takes none of them"
        kind = "an ONNX export option" if refused[0] in ONNX_FLAGS else "LiteRT's int8 option"
        raise ConfigError(f"{refused[0]} does not apply to --format {args.format} ({kind}; {takes})")


def quantize_options(args: argparse.Namespace) -> Any:
    """The ONNX int8 model's options as the command line gave them."""
    from ..export.quantize import QuantizeOptions

    return QuantizeOptions(
        method=args.calibration_method, percentile=args.calibration_percentile, weight_rounding=args.weight_rounding,
        bias_correction=args.bias_correction, range_search=args.range_search,
        range_search_images=args.range_search_images, range_search_sweeps=args.range_search_sweeps,
    )  # fmt: skip


def _defaults(parser: argparse.ArgumentParser, options: list[str]) -> dict[str, tuple[str, Any]]:
    """option -> (its attribute, its default): what :func:`given` compares with."""
    dests = {option: option[2:].replace("-", "_") for option in options}
    return {option: (dest, parser.get_default(dest)) for option, dest in dests.items()}


def given(args: argparse.Namespace, options: dict[str, tuple[str, Any]]) -> list[str]:
    """Which of ``options`` (from :func:`_defaults`) the command line set away from the default."""
    return [option for option, (dest, default) in options.items() if getattr(args, dest) != default]


def add_auto_options(parser: argparse.ArgumentParser) -> None:
    auto = parser.add_argument_group("--format auto")
    auto.add_argument("--tolerance", type=float, default=0.5,
                      help="points of the model's score a faster path may lose against PyTorch (default 0.5): "
                      "top-1, a detector's mAP or a segmenter's mIoU on --eval-data; a classifier without it is "
                      "scored as agreement with fp32 on the --calibration images")  # fmt: skip
    auto.add_argument("--runtimes", type=csv_of(), help="comma-separated runtimes to try (default: every installed "
                      "one that writes a file: onnxruntime, openvino, litert, executorch)")  # fmt: skip
    auto.add_argument("--threads", type=POSITIVE_INT.argtype, default=2, help="threads to time with (default 2)")


def run(args: argparse.Namespace) -> int:
    from ..runtimes import runtime_for_format

    out = Path(args.out)
    require_weights(args, "export")
    if args.precision and args.int8 and args.precision != "int8":
        raise ConfigError(f"--int8 and --precision {args.precision} disagree: give one")
    args.int8 = args.int8 or args.precision == "int8"
    args.format = args.format or format_for_file(out) or "onnx"
    if args.format == "auto":
        return run_auto(args, out)
    auto_only = given(args, args.auto_only)
    if auto_only:
        raise ConfigError(f"{', '.join(auto_only)} {'is' if len(auto_only) == 1 else 'are'} for --format auto")
    precision = "int8" if args.int8 else args.precision or "fp32"
    runtime = runtime_for_format(args.format)
    refuse_untaken_flags(args, taken_flags(args.format, runtime))
    runtime.check(precision)
    if args.calibration and not args.int8:
        raise ConfigError("--calibration sets int8 ranges: add --int8, or drop --calibration")
    # PT2E's methods where the runtime's exporter takes its own, ONNX's where the ONNX int8 options
    # (a format that takes no --calibration-method refuses one given to it, in run_runtime)
    methods = PT2E_CALIBRATION_METHODS if "calibration_method" in runtime.export_options else CALIBRATION_METHODS
    if "--calibration-method" in taken_flags(args.format, runtime) and args.calibration_method not in methods:
        raise ConfigError(
            f"--calibration-method {args.calibration_method} is not available for --format {args.format} "
            f"(one of {', '.join(methods)})"
        )
    if args.format != "onnx":  # a runtime's own exporter (the ONNX file's options are below)
        return run_runtime(args, out, runtime, precision)
    if out.suffix != ".onnx":
        others = ", ".join(f"{r.suffix} (--format {r.format})" for r in list_runtimes() if r.format not in ("", "onnx"))
        raise ConfigError(f"--out should name an .onnx file, got {out}; the other formats write {others}")
    from ..export import max_opset
    from ..export.deploy import deploy_onnx
    from ..export.onnx import MIN_OPSET
    from ..export.qat import is_qat
    from ..runtimes import load_exported

    if not MIN_OPSET <= args.opset <= max_opset():
        raise ConfigError(
            f"--opset must be between {MIN_OPSET} and {max_opset()} (the highest this torch writes), got {args.opset}"
        )
    model, info = load_for_cli(args, "export")
    trained_for_int8 = is_qat(model)
    scoring, calibration = export_inputs(args, info, calibrated=trained_for_int8)
    files = deploy_onnx(model, out, info=info, int8=args.int8, calibration=calibration, options=quantize_options(args),
                        dynamic_batch=args.dynamic_batch, opset=args.opset, log=print)  # fmt: skip
    fp32_path = files.fp32
    summary: dict[str, Any] = {"fp32": str(fp32_path), "max_relative_error": files.report.max_relative_error}
    if files.int8 is not None:
        summary["int8"] = str(files.int8)
        summary["latency_ms"] = latency_verdict(fp32_path, out, int(info["resolution"]))
    if scoring is not None:
        runners = {"pytorch_qat" if trained_for_int8 else "pytorch": model, "onnx_fp32": load_exported(fp32_path)}
        if args.int8:
            runners["onnx_int8"] = load_exported(out)
        summary["accuracy"] = report_accuracy(runners, scoring, width=10)
    write_summary(out, summary)
    return 0


def report_accuracy(runners: dict[str, Any], scoring: Scoring, *, width: int) -> dict[str, Any]:
    """The task's scores of each form of the model - PyTorch, the exported files - on the same
    labelled images, printed a line each; what the export summary records."""
    accuracy = {}
    for name, runner in runners.items():
        metrics = scoring.measure(runner)
        accuracy[name] = {key: metrics[key] for key in scoring.recorded}
        print(f"{name:{width}s} {scoring.describe(metrics)}")
    return accuracy


def summary_path(out: Path) -> Path:
    """Where an export's summary goes: ``<out>.export.json`` (``m.onnx.export.json``), so that
    exports of one stem to two formats, or a user's own ``m.json``, are not overwritten."""
    return out.with_name(out.name + ".export.json")


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    from ..files import atomic_write

    path = summary_path(out)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
    print(f"wrote {path} (what was exported, its error against PyTorch{', accuracy' * ('accuracy' in summary)})")


def export_inputs(args: argparse.Namespace, info: dict[str, Any], *, calibrated: bool) -> tuple[Scoring | None, Any]:
    """What an export scores each form on (--eval-data, as the model's task measures it) and its
    calibration images, each checked before anything is written; ``calibrated``: the model brings
    its own int8 ranges (a --qat checkpoint), so --int8 needs no --calibration."""
    from ..data import calibration_images
    from ..tasks import task_of

    task = task_of(info)
    if not task.quantizable and (args.int8 or args.calibration):
        raise ConfigError(f"--int8 and --calibration are for classifiers; {task.noun} exports in fp32 (or bf16)")
    if args.int8 and not args.calibration and not calibrated:
        raise ConfigError("--int8 needs --calibration DIR: images whose activations set the int8 ranges")
    scoring = None
    if args.eval_data:
        scoring = task.commands().scoring(args.eval_data, info, subset=args.val_subset, source=model_source(args))
    calibration = None
    if args.calibration:
        calibration = calibration_images(
            args.calibration, style=info["transforms"], resolution=info["resolution"], count=args.calibration_images
        )
    return scoring, calibration


def latency_verdict(fp32: Path, int8: Path, size: int) -> dict[str, Any]:
    """Time both exports here and say plainly whether int8 is worth shipping to this host."""
    from ..runtimes.bench import cpu_description, int8_pays

    fp32_ms, int8_ms = int8_pays(fp32, int8, size)
    ratio = fp32_ms / int8_ms
    print(
        f"latency on this host ({cpu_description()}, ONNX Runtime, batch 1): fp32 {fp32_ms:.2f} ms, int8 {int8_ms:.2f} ms"
    )
    if ratio >= 1.1:
        print(f"int8 pays here: {ratio:.2f}x faster than fp32")
    elif ratio > 0.95:
        print(f"int8 does not pay here ({ratio:.2f}x fp32's speed): ship fp32 to CPUs like this one; int8 still "
              "quarters the file, and pays on CPUs with integer dot products (x86 VNNI, Arm dot-product)")  # fmt: skip
    else:
        print(f"int8 is SLOWER here ({1 / ratio:.2f}x fp32's time): ship fp32 to CPUs like this one; int8 pays on "
              "CPUs with integer dot products (x86 VNNI, Arm dot-product) and still quarters the file")  # fmt: skip
    return {"fp32": fp32_ms, "int8": int8_ms, "cpu": cpu_description()}


def run_runtime(args: argparse.Namespace, out: Path, runtime, precision: str) -> int:
    """``export --format NAME`` for a runtime other than ONNX's (OpenVINO, LiteRT, ExecuTorch): the
    runtime exports and checks the file against PyTorch with the options it takes
    (``Runtime.export_options``)."""
    from ..export.qat import convert_qat, is_qat
    from ..runtimes import load_exported

    if out.suffix != runtime.suffix:
        raise ConfigError(f"--out should name a {runtime.suffix} file for --format {args.format}, got {out}")
    model, info = load_for_cli(args, "export")
    # --eval-data's images are decoded here, by worker processes, before a converter that may not
    # survive a fork (JAX) is imported
    scoring, calibration = export_inputs(args, info, calibrated=False)
    if is_qat(model):  # the float model it simulates
        model = convert_qat(model)[0]
    print(f"exporting to {runtime.title} ({precision})" + (f"; {runtime.export_note}" if runtime.export_note else ""))
    check = calibration[:1] if calibration is not None else None  # a real image for the runtime check
    options = {name: EXPORT_OPTIONS[name][1](args) for name in runtime.export_options}
    summary = runtime.export(model, out, info=info, precision=precision, calibration=calibration, check_input=check,
                             **options)  # fmt: skip
    print(
        summary.pop("message", None)
        or f"wrote {out} ({precision}); {runtime.title} vs PyTorch relative error {summary['max_relative_error']:.2e}"
    )
    if scoring is not None:
        runners = {"pytorch": model, f"{runtime.name}_{precision}": load_exported(out, runtime=runtime)}
        summary["accuracy"] = report_accuracy(runners, scoring, width=17)
    write_summary(out, summary)
    return 0


def run_auto(args: argparse.Namespace, out: Path) -> int:
    """``export --format auto``: see :mod:`mobilenets.runtimes.auto`."""
    import tempfile

    from ..runtimes import get_runtime
    from ..runtimes.auto import (
        candidate_paths,
        candidates_table,
        copy_export,
        measure_candidates,
        pick,
        score_candidates,
        unscored_note,
    )
    from ..runtimes.bench import PreparedModel, cpu_description
    from ..tasks import task_of

    if args.int8 or args.precision:
        raise ConfigError("--format auto tries every precision itself; drop --int8/--precision")
    refuse_untaken_flags(args, taken_flags("auto", None))  # its candidates are every runtime's batch-1 file
    if not args.tolerance >= 0:
        raise ConfigError(f"--tolerance is points of the model's score and cannot be negative, got {args.tolerance:g}")
    for name in args.runtimes or []:
        get_runtime(name)  # an unknown name is one line
    model, info = load_for_cli(args, "export")
    task = task_of(info)
    if task.quantizable and not (args.calibration or args.eval_data):
        raise ConfigError("--format auto scores int8 paths: give --calibration DIR (and --eval-data for top-1)")
    # decoded now, by worker processes, before a converter that may not survive a fork (JAX) is imported
    scoring, calibration = export_inputs(args, info, calibrated=False)
    names = candidate_paths(task, args.runtimes)
    if not names:
        raise ConfigError("no installed runtime writes a file for this model; pip install 'mobilenets[openvino]'")
    progress = lambda line: print(line, file=sys.stderr)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="mobilenets-auto-") as tmp:
        prepared = PreparedModel(model, info, Path(tmp), calibration, "auto", quantize=quantize_options(args))
        candidates = measure_candidates(prepared, names, threads=args.threads, runs=30, progress=progress)
        if scoring is None and task.quantizable:  # no labels: agreement with fp32's top-1 on the calibration images
            scoring = task.commands().agreement(model, prepared.calibration_images())
        # unscored (a detector or segmenter without --eval-data): only the paths that compute what PyTorch does
        reference = None if scoring is None else score_candidates(prepared, candidates, scoring.headline, progress)
        scored_by = None if scoring is None else scoring.metric
        chosen = pick(candidates, reference, args.tolerance)
        print(candidates_table(candidates, reference, scored_by))
        left_out = unscored_note(candidates, chosen) if reference is None else None
        if left_out:
            print(left_out)
        print(f"measured on {cpu_description()}, {args.threads} thread(s), batch 1")
        runtime = get_runtime(chosen.runtime)
        target = out.with_suffix(runtime.suffix) if out.suffix else out.with_name(out.name + runtime.suffix)
        written = copy_export(runtime, prepared.exported_file(chosen.path), target)
    print(f"chosen: {chosen.path} ({chosen.median_ms:.2f} ms); wrote {', '.join(map(str, written))}")
    summary = {"chosen": chosen.path, "file": str(target), "cpu": cpu_description(), "threads": args.threads,
               "candidates": [vars(c) for c in candidates], "reference_accuracy": reference, "scored_by": scored_by}  # fmt: skip
    write_summary(target, summary)
    return 0
