"""Do a segmenter's running batch-norm statistics lag its weights?  One checkpoint scored on its
own training images twice, on the same fixed crops in the same batches: in eval mode (the running
statistics, what an export deploys) and with each batch's own statistics (what the weights compute
while they train).  A gap means the evaluated network is not the trained one.

    python benchmarks/bn_lag.py runs/lraspp-person/last.pt runs/lraspp-person-lagging/last.pt \\
        --data-dir ../shared/data/coco128

MobileNetV3's batch norms keep torchvision's momentum 0.01: after a few hundred steps from scratch
their running averages still hold much of the random initialisation's statistics.  ``mobilenets
train`` re-estimates them on training images before each evaluation (``--recompute-bn``, the
segmentation recipes' default); a run with ``--recompute-bn 0`` shows the lag.  Each image is
resized to the checkpoint's resolution (square: a batch needs one size; a random crop would score
different pixels in the two passes) and batches hold 8 images, as training's did.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torchvision.transforms.v2 as T
from torchvision import tv_tensors

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mobilenets._table import format_table  # noqa: E402
from mobilenets.data import IMAGENET_MEAN, IMAGENET_STD, make_loader  # noqa: E402
from mobilenets.models import load_model_with_info  # noqa: E402
from mobilenets.predict import default_data_info  # noqa: E402
from mobilenets.runtimes.bench import cpu_description  # noqa: E402
from mobilenets.segmentation.data import collate, find_segmentation_data  # noqa: E402
from mobilenets.segmentation.evaluate import confusion_matrix, segmentation_metrics  # noqa: E402


def fixed_size(resolution: int) -> T.Compose:
    return T.Compose([
        T.ToImage(), T.Resize((resolution, resolution), antialias=True),
        T.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True), T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])  # fmt: skip


@torch.no_grad()
def score(model, batches, num_classes: int, *, batch_statistics: bool) -> dict:
    """mIoU over ``batches``; ``batch_statistics``: every batch norm normalises by the batch's own
    mean and variance (the running buffers it would update are restored afterwards)."""
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    if batch_statistics:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.train()
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for images, masks in batches:
        matrix += confusion_matrix(masks, model(images)["out"].argmax(1), num_classes)
    model.load_state_dict(saved)
    return segmentation_metrics(matrix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="segmenters' checkpoints (a run's last.pt or best.pt)")
    parser.add_argument("--data-dir", required=True, help="the data they trained on")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for path in args.checkpoints:
        model, info = load_model_with_info(path)
        info = default_data_info(model, info)
        resolution, classes = int(info["resolution"]), list(info["classes"])
        data = find_segmentation_data(args.data_dir, train_transforms=fixed_size(resolution),
                                      val_transforms=fixed_size(resolution), classes=info.get("selected_classes"))  # fmt: skip
        batches = list(make_loader(data.train, args.batch_size, workers=2, collate_fn=collate))
        running = score(model, batches, len(classes), batch_statistics=False)
        own = score(model, batches, len(classes), batch_statistics=True)
        rows.append([path, len(classes), *(f"{100 * m[key]:.1f}" for key in ("miou", "pixel_acc") for m in (running, own)),
                     f"{100 * (own['miou'] - running['miou']):+.1f}", len(data.train)])  # fmt: skip
    print(f"# {cpu_description()}; training images at their checkpoint's resolution, batches of {args.batch_size}")
    print(format_table(["checkpoint", "classes", "mIoU: running statistics (eval mode)", "batch statistics",
                        "pixel acc: running", "batch", "mIoU gap (points)", "images"], rows))  # fmt: skip


if __name__ == "__main__":
    main()
