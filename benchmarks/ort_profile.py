"""Where an exported model's time goes in ONNX Runtime: kernel time per operator type, fp32 against int8.

    python benchmarks/ort_profile.py --model mobilenet_v3_small [--weights FILE] [--calibration DIR] [--threads 2]

Exports the registry model (BN folded), quantizes it with the default int8 pipeline
(without the range search, which changes steps only, not the operators that run),
runs both with ONNX Runtime's profiler on one image at a time and prints, per
operator type, the mean kernel time per run and how many such kernels run.
Convolutions are split by kind (depthwise, pointwise 1x1, full kxk), read from the
graph ONNX Runtime actually runs (after its fusions and layout changes).
Without ``--calibration`` the int8 ranges come from random images: the timing is
the same, the accuracy is not measured here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mobilenets import create_model  # noqa: E402
from mobilenets._table import format_table  # noqa: E402
from mobilenets.data import calibration_images  # noqa: E402
from mobilenets.export import export_onnx, quantize_onnx  # noqa: E402
from mobilenets.predict import default_data_info  # noqa: E402
from mobilenets.weights import load_weights  # noqa: E402


def conv_kinds(optimized: Path) -> dict[str, str]:
    """Node name -> "depthwise", "pointwise" or "full" for every convolution of a saved optimized graph."""
    import onnx

    kinds = {}
    for node in onnx.load(str(optimized)).graph.node:
        if "Conv" not in node.op_type:
            continue
        attributes = {a.name: a for a in node.attribute}
        group = attributes["group"].i if "group" in attributes else 1
        kernel = list(attributes["kernel_shape"].ints) if "kernel_shape" in attributes else []
        kinds[node.name] = "depthwise" if group > 1 else "pointwise" if kernel == [1, 1] else "full"
    return kinds


def kernel_times(path: Path, image: np.ndarray, threads: int, runs: int) -> tuple[Counter, Counter]:
    """Milliseconds per run and kernels per run, by operator type (convolutions by kind)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    for _ in range(10):  # warm up without the profiler
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"image": image})
    options.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, {"image": image})
    events = json.loads(Path(session.end_profiling()).read_text())
    kinds = conv_kinds(Path(options.optimized_model_filepath))
    milliseconds, counts = Counter(), Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            node = event["name"].removesuffix("_kernel_time")
            op = event["args"]["op_name"] + (f" {kinds[node]}" if node in kinds else "")
            milliseconds[op] += event["dur"] / 1000 / runs
            counts[op] += 1 / runs
    return milliseconds, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v3_small")
    parser.add_argument("--weights", help="trained weights (timing does not need them)")
    parser.add_argument("--calibration", help="folder of images for the int8 ranges (default: random images)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()

    model = create_model(args.model).eval()
    if args.weights:
        load_weights(model, args.weights)
    info = default_data_info(model, {})
    size = info["resolution"]
    if args.calibration:
        calibration = calibration_images(args.calibration, style=info["transforms"], resolution=size, count=64)
    else:
        calibration = torch.randn(16, 3, size, size, generator=torch.Generator().manual_seed(0))
    image = calibration[:1].float().numpy()
    with tempfile.TemporaryDirectory() as workdir:
        fp32_path, int8_path = Path(workdir) / "fp32.onnx", Path(workdir) / "int8.onnx"
        export_onnx(model, fp32_path, info=info)
        quantize_onnx(fp32_path, int8_path, calibration, model=model, range_search=False)
        for name, path in (("fp32", fp32_path), ("int8", int8_path)):
            milliseconds, counts = kernel_times(path, image, args.threads, args.runs)
            rows = [[op, f"{ms:.3f}", f"{counts[op]:.0f}"] for op, ms in milliseconds.most_common()]
            rows.append(["total", f"{sum(milliseconds.values()):.3f}", f"{sum(counts.values()):.0f}"])
            print(f"\n{args.model} {name}, batch 1, {args.threads} threads, mean over {args.runs} runs")
            print(format_table(["operator", "ms per run", "kernels per run"], rows))


if __name__ == "__main__":
    main()
