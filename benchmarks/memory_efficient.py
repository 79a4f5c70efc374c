"""Memory-efficient inference (MobileNetV2 paper, Section 5): peak activation memory and
latency of ``mobilenets.memory_efficient(model, splits=t)`` against plain eager inference.

    python benchmarks/memory_efficient.py [--model mobilenet_v2] [--resolution 224] [--batch-size 1]
                                          [--device cpu|cuda] [--json out.json]

Peak activation memory is measured two ways: by tracing every tensor the forward pass
creates and frees (``mobilenets.cost.trace_live_activations``, any device; weights
excluded), and on CUDA also by the allocator itself (``torch.cuda.max_memory_allocated``
above the memory held before the call).  Latency is the median of timed runs, with the
eager model, the BN-folded eager model (what the memory-efficient copy is built on)
and each t taking turns so a noisy machine slows all alike.  The profile's analysis (the
V2 paper's measure: the largest tensor when each inverted-residual block is one
operation) is printed beside the measurements.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import mobilenets  # noqa: E402
from mobilenets.cost import trace_live_activations  # noqa: E402
from mobilenets.export import fold_batchnorm, memory_efficient  # noqa: E402

SPLITS = (1, 2, 4, 8)


def allocator_peak(model, x) -> int | None:
    if x.device.type != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        out = model(x)
    torch.cuda.synchronize()
    del out
    return torch.cuda.max_memory_allocated() - base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = mobilenets.create_model(args.model, resolution=args.resolution).eval()
    prof = mobilenets.profile(model, (3, args.resolution, args.resolution))
    variants = {"eager": model, "eager, BN folded": fold_batchnorm(model)[0]}
    variants.update({f"t={t}": memory_efficient(model, splits=t) for t in SPLITS})
    variants = {name: m.to(args.device) for name, m in variants.items()}
    x = torch.randn(args.batch_size, 3, args.resolution, args.resolution, device=args.device)

    rows = {}
    with torch.no_grad():
        reference = variants["eager"](x)
        for name, m in variants.items():
            out = m(x)
            rows[name] = {
                "relative_error": ((out - reference).norm() / reference.norm()).item(),
                "traced_peak_bytes": trace_live_activations(m, x).peak_bytes,
                "allocator_peak_bytes": allocator_peak(m, x),
                "times_ms": [],
            }
        for _ in range(3):  # warm-up
            for m in variants.values():
                m(x)
        for _ in range(args.runs):
            for name, m in variants.items():
                if x.device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                m(x)
                if x.device.type == "cuda":
                    torch.cuda.synchronize()
                rows[name]["times_ms"].append(1000 * (time.perf_counter() - start))

    eager = rows["eager"]
    print(
        f"{args.model} at {args.resolution}x{args.resolution}, batch {args.batch_size}, {args.device}"
        f"{'' if args.device != 'cpu' else f', {args.threads} threads'}; median of {args.runs} runs"
    )
    print(
        "| mode | rel. error | traced peak (MB) | vs eager | allocator peak (MB) | vs eager | median ms | latency vs eager |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        row["median_ms"] = statistics.median(row["times_ms"])
        alloc, eager_alloc = row["allocator_peak_bytes"], eager["allocator_peak_bytes"]
        print(
            f"| {name} | {row['relative_error']:.1e} | {row['traced_peak_bytes'] / 2**20:.2f} "
            f"| {eager['traced_peak_bytes'] / row['traced_peak_bytes']:.2f}x lower "
            f"| {'-' if alloc is None else f'{alloc / 2**20:.2f}'} "
            f"| {'-' if alloc is None else f'{eager_alloc / alloc:.2f}x lower'} "
            f"| {row['median_ms']:.2f} | {row['median_ms'] / eager['median_ms']:.2f}x |"
        )
    blockwise = prof.largest_activation_blockwise * args.batch_size
    print(
        f"\nprofile's analysis (V2 paper sec. 5): with each block one operation the largest tensor is "
        f"{blockwise:,} elements = {blockwise * 4 / 2**20:.2f} MB in fp32; eager's largest is "
        f"{prof.largest_activation * args.batch_size * 4 / 2**20:.2f} MB"
    )
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
