"""Detector training ablations that the library has no option for, measured on coco128's people
(docs/benchmarks.md, "One class"): each flag changes one thing, then ``mobilenets train`` runs with the
rest of the command line as given. (Training on the images that hold an object only, measured with this
script's patch before the library had it, is ``mobilenets train --skip-empty-images``.)

    python benchmarks/detection_ablations.py [--anchor-scales S0,...,S6] [--sgd-lr LR] [--stride-8] \
        -- train --model ssdlite_mobilenet_v2 --recipe coco-ssdlite ...

* ``--anchor-scales``: default boxes of these 7 scales (fractions of the image side; 6 boxes per position,
  ratios 1, 2, 1/2, 3, 1/3 and one between scales) instead of 0.1 (3 boxes), 0.2 ... 0.95; coco128's
  people are small (a third of the validation ones under 0.1 of the image side).
* ``--sgd-lr``: the coco-ssdlite recipe with SGD (momentum 0.9) at this rate instead of AdamW.
* ``--stride-8``: ssdlite_mobilenet_v2 with a third backbone map, block 7's expansion (192 channels at output
  stride 8: 40x40 at 320x320), before the usual two, for the smallest objects (give 8 ``--anchor-scales``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace


def _anchor_scales(scales: list[float]) -> None:
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

    import mobilenets.models.ssd as ssd

    class Anchors(DefaultBoxGenerator):
        def __init__(self, levels: int, *, lowest_layer_boxes: int = 6) -> None:
            if len(scales) != levels + 1:
                raise SystemExit(f"--anchor-scales needs {levels + 1} scales for {levels} maps")
            self.lowest_layer_boxes = 6
            super().__init__([[2, 3]] * levels, scales=scales)

        def num_anchors_per_location(self) -> list[int]:
            return [len(pairs) for pairs in self._wh_pairs]

    ssd.SSDAnchors = Anchors


def _stride_8() -> None:
    import mobilenets.models.ssd as ssd

    build = ssd.build_ssd  # the registered builders call it with their spec

    def build_ssd(spec, **options):
        if spec is ssd.SSD_SPECS["ssdlite_mobilenet_v2"]:
            spec = replace(spec, taps=("7.expansion", *spec.taps))
        return build(spec, **options)

    ssd.build_ssd = build_ssd


def _sgd(lr: float) -> None:
    from mobilenets.train import recipes

    recipes.RECIPES["coco-ssdlite"] = replace(recipes.RECIPES["coco-ssdlite"], optimizer="sgd", lr=lr, momentum=0.9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--anchor-scales", type=lambda text: [float(s) for s in text.split(",")])
    parser.add_argument("--sgd-lr", type=float)
    parser.add_argument("--stride-8", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the mobilenets command line")
    args = parser.parse_args()
    if args.anchor_scales:
        _anchor_scales(args.anchor_scales)
    if args.stride_8:
        _stride_8()
    if args.sgd_lr:
        _sgd(args.sgd_lr)
    from mobilenets.cli import main as cli_main

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return cli_main(command)


if __name__ == "__main__":
    sys.exit(main())
