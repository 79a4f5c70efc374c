"""``mobilenets plot``: training curves and accuracy against mult-adds as a PNG."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="plot training runs: loss and top-1 (mAP, mIoU) per epoch, against mult-adds",
        description=(
            "Read the metrics.jsonl / summary.json of one or more run directories and write one PNG: "
            "training and validation loss, the validation score per epoch (top-1 for classifiers; mAP and mAP50 "
            "for detectors; mIoU and pixel accuracy for segmenters), and the final score against "
            "mult-adds (log scale, the papers' Figure 4/5 style) across finished runs - or, where they are all "
            "one network (seeds, settings), a bar per run of its final score."
        ),
        epilog="Example: mobilenets plot runs/width-* --out widths.png",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories written by 'mobilenets train'")
    parser.add_argument("--out", default="runs.png", help="PNG file to write (default runs.png)")
    parser.add_argument(
        "--x",
        choices=["epoch", "minutes", "wall"],
        default="epoch",
        help="curves against epochs, training minutes (to compare runs at equal cost) or wall-clock minutes since "
        "the run began, set-up and validation included (time to accuracy)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..plots import plot_runs

    print(f"wrote {plot_runs(args.runs, args.out, x=args.x)}")
    return 0
