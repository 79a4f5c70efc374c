"""``mobilenets choose``: the most accurate published MobileNet that meets a latency budget on this machine."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..validate import POSITIVE_INT, csv_of

EXAMPLES = """\
Examples:
  # what fits 3 ms per image on this CPU with ONNX Runtime, 2 threads
  mobilenets choose --latency-ms 3 --out choose/
  # the same budget on OpenVINO at int8 (the [openvino] extra), MobileNetV2 only
  mobilenets choose --latency-ms 3 --runtime openvino --precision int8 --families v2
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "choose",
        help="pick the most accurate published MobileNet that meets a latency budget on this machine",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Time every published ImageNet MobileNet on this machine - V1 at widths 1, 0.75, 0.5, 0.25 and\n"
            "resolutions 224, 192, 160, 128; V2 at widths 0.35-1.4 and 96-224 as TF-slim publishes them;\n"
            "V3 Large and Small at widths 1 and 0.75 - on one runtime at one precision (batch 1, alternating\n"
            "rounds), put the published top-1 beside each latency, and name the most accurate variant under\n"
            "--latency-ms. Writes choose.txt, choose.json and choose.png (accuracy against latency, the front\n"
            "and the budget) to --out. Untrained models are timed: latency does not depend on the weights."
        ),
        epilog=EXAMPLES,
    )
    parser.add_argument("--latency-ms", type=float, required=True, help="the budget per image (batch 1), in ms")
    parser.add_argument("--runtime", default="onnxruntime",
                        help="the runtime to time on: onnxruntime (default), openvino, litert, executorch, pytorch")  # fmt: skip
    parser.add_argument("--precision", default="fp32", help="fp32 (default), int8, bf16 (OpenVINO on CPUs with it)")
    parser.add_argument("--threads", type=POSITIVE_INT.argtype, default=2, help="intra-op threads (default 2)")
    parser.add_argument("--families", type=csv_of(choices=["v1", "v2", "v3"]), default=["v1", "v2", "v3"],
                        help="comma-separated, from v1, v2, v3 (default all)")  # fmt: skip
    parser.add_argument("--runs", type=POSITIVE_INT.argtype, default=30, help="timed runs per variant (default 30)")
    parser.add_argument("--out", help="folder for choose.txt, choose.json, choose.png")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..files import atomic_write
    from ..runtimes import get_runtime
    from ..runtimes.bench import cpu_description
    from ..runtimes.choose import choice_table, choose, measure_variants, plot_front, published_variants

    if not args.latency_ms > 0:
        raise ConfigError(f"--latency-ms must be a positive number of milliseconds, got {args.latency_ms:g}")
    get_runtime(args.runtime).check(args.precision)
    variants = published_variants(args.families)
    measured = measure_variants(variants, runtime=args.runtime, precision=args.precision, threads=args.threads,
                                runs=args.runs, progress=lambda line: print(line, file=sys.stderr))  # fmt: skip
    chosen = choose(measured, args.latency_ms)
    where = f"{cpu_description()}, {args.runtime} {args.precision}, {args.threads} thread(s), batch 1"
    text = choice_table(measured, chosen) + f"\nmeasured on {where}\n"
    if chosen is None:
        fastest = min((m for m in measured if m.median_ms is not None), key=lambda m: m.median_ms, default=None)
        text += f"nothing meets {args.latency_ms:g} ms here" + (
            f"; the fastest is {fastest.variant.label} at {fastest.median_ms:.2f} ms" if fastest else ""
        )
    else:
        text += (f"chosen for {args.latency_ms:g} ms: {chosen.variant.label} - {chosen.median_ms:.2f} ms here, "
                 f"{chosen.variant.top1:.1f} % published ImageNet top-1")  # fmt: skip
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "choose.txt", lambda tmp: Path(tmp).write_text(text + "\n"))
        payload = {"budget_ms": args.latency_ms, "machine": where, "chosen": chosen.row() if chosen else None,
                   "variants": [m.row() for m in measured]}  # fmt: skip
        atomic_write(out / "choose.json", lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2)))
        title = f"{args.runtime} {args.precision}, {args.threads} thread(s), batch 1\n{cpu_description()}"
        plot_front(measured, chosen, args.latency_ms, title, out / "choose.png")
        print(f"wrote {out}/choose.txt, choose.json, choose.png")
    return 0 if chosen is not None else 1
