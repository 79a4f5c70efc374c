"""Small-budget fine-tuning: a plain torchvision loop against ``mobilenets train``, back to back.

    python benchmarks/finetune_reference.py --data-dir ../shared/data/cifar10 \\
        --weights ../shared/data/weights/mobilenet_v2-b0353104.pth [--train-images 1000] \\
        [--val-images 500] [--epochs 1] [--seeds 0,1,2] [--ours "--body-lr-mult 0.3"] [--json out.json]

Both start from the same ImageNet MobileNetV2 file and see the same class-balanced slice of
training images (the library's ``balanced_subset``, so the same files), for the same number of
epochs, and are scored on the same test images. The reference is what a user writes from
torchvision's documentation: ``torchvision.models.mobilenet_v2`` with a new 10-way classifier,
images resized to 96x96 with ImageNet's statistics and flipped, Adam with the body at 1e-4 and the
classifier at 1e-3, a constant rate, batch 32, batch norm in training mode. Ours is
``mobilenets train --recipe finetune`` (plus ``--ours`` options). One row per seed and their mean:
with 500 test images one run moves by about two points.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.transforms import v2 as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mobilenets._table import format_table  # noqa: E402
from mobilenets.cli import main as cli_main  # noqa: E402
from mobilenets.data import balanced_subset  # noqa: E402
from mobilenets.runtimes.bench import cpu_description  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _folder(root: Path, train: bool, size: int) -> torchvision.datasets.ImageFolder:
    steps = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Resize((size, size), antialias=True)]
    if train:
        steps.append(T.RandomHorizontalFlip())
    return torchvision.datasets.ImageFolder(str(root), T.Compose([*steps, T.Normalize(MEAN, STD)]))


def reference(args, seed: int) -> tuple[float, float]:
    """Top-1 (%) and training seconds of the plain loop."""
    torch.manual_seed(seed)
    root = Path(args.data_dir)
    train = _folder(root / "train", True, args.resolution)
    test_root = root / "test" if (root / "test").is_dir() else root / "val"
    test = _folder(test_root, False, args.resolution)
    # the same slices `mobilenets train --train-subset/--val-subset` takes (seed 0 / 1)
    train = balanced_subset(train, args.train_images, train.targets, 0)
    test = balanced_subset(test, args.val_images, test.targets, 1)
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(args.weights, weights_only=True))
    model.classifier[1] = nn.Linear(model.last_channel, len(train.dataset.classes))
    optimizer = torch.optim.Adam(
        [{"params": model.features.parameters(), "lr": 1e-4}, {"params": model.classifier.parameters(), "lr": 1e-3}]
    )
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True, num_workers=2)
    started = time.perf_counter()
    model.train()
    for _ in range(args.epochs):
        for images, labels in loader:
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - started
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in torch.utils.data.DataLoader(test, batch_size=100, num_workers=2):
            correct += (model(images).argmax(1) == labels).sum().item()
    return 100 * correct / len(test), seconds


def ours(args, seed: int) -> tuple[float, float]:
    """Top-1 (%) and seconds of ``mobilenets train --recipe finetune``: its whole run (fitting the
    head and validating included), against the reference's training loop alone."""
    with tempfile.TemporaryDirectory() as out:
        command = ["train", "--model", "mobilenet_v2", "--recipe", "finetune", "--init-from", args.weights,
                   "--data-dir", args.data_dir, "--train-subset", str(args.train_images), "--val-subset",
                   str(args.val_images), "--epochs", str(args.epochs), "--seed", str(seed), "--out", out,
                   "--no-progress", *shlex.split(args.ours)]  # fmt: skip
        if cli_main(command) not in (0, None):
            raise SystemExit(f"mobilenets {' '.join(command)} failed")
        summary = json.loads((Path(out) / "summary.json").read_text())
    return 100 * summary["top1"], summary["wall_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="an ImageFolder tree with train/ and test/ (or val/)")
    parser.add_argument("--weights", required=True, help="torchvision's MobileNetV2 ImageNet state dict")
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--val-images", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=96)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated; one run of each loop per seed")
    parser.add_argument("--ours", default="", help="extra `mobilenets train` options, quoted")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        ref_top1, ref_s = reference(args, seed)
        our_top1, our_s = ours(args, seed)
        rows.append({"seed": seed, "reference_top1": ref_top1, "reference_s": ref_s, "ours_top1": our_top1,
                     "ours_s": our_s})  # fmt: skip
    mean = {key: sum(r[key] for r in rows) / len(rows) for key in rows[0] if key != "seed"}
    print(f"{cpu_description()}, torch {torch.__version__}, {args.train_images} training images, {args.epochs} "
          f"epoch(s), {args.val_images} test images; ours: --recipe finetune {args.ours}".rstrip())  # fmt: skip
    table = [[str(r["seed"]), f"{r['reference_top1']:.1f}", f"{r['reference_s']:.0f}", f"{r['ours_top1']:.1f}",
              f"{r['ours_s']:.0f}"] for r in rows]  # fmt: skip
    table.append(["mean", *(f"{mean[k]:.1f}" if "top1" in k else f"{mean[k]:.0f}" for k in mean)])
    print(format_table(["seed", "plain loop top-1 (%)", "its training (s)", "ours top-1 (%)", "its whole run (s)"],
                       table))  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "mean": mean, "ours": args.ours}, indent=2))


if __name__ == "__main__":
    main()
