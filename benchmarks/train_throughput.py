"""CPU training throughput: our MobileNetV2 against torchvision's, same loop, same run.

    python benchmarks/train_throughput.py [--resolution 128] [--batch-size 32] [--steps 8]

Both models train on the same real CIFAR-10 images (decoded once, resized to the
resolution, kept as a tensor so image decoding is not what is measured) with the
same SGD step, taking turns step by step so that a noisy machine slows both
alike.  Prints images/s per model and memory format and the ratio ours/theirs.
A last row shows the CIFAR configuration the `cifar10` recipe trains (our
32x32 variant with total stride 8), which torchvision does not offer.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mobilenets import create_model  # noqa: E402
from mobilenets.data import build_datasets  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def real_batch(data_dir: Path, batch_size: int, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    train_set, _, _ = build_datasets(data_dir, style="cifar", resolution=resolution, train_subset=batch_size)
    images, labels = zip(*(train_set[i] for i in range(batch_size)))
    return torch.stack(images), torch.tensor(labels)


def step_fn(model: torch.nn.Module, channels_last: bool):
    model.train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step(images: torch.Tensor, labels: torch.Tensor) -> float:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        start = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=SHARED / "cifar10")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per model (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    images, labels = real_batch(args.data_dir, args.batch_size, args.resolution)
    cifar_images, cifar_labels = real_batch(args.data_dir, args.batch_size, 32)
    runs = {}
    for fmt in ("NCHW", "channels_last"):
        cl = fmt == "channels_last"
        runs[("mobilenets mobilenet_v2", fmt)] = (
            step_fn(create_model("mobilenet_v2", num_classes=10), cl),
            images,
            labels,
        )
        runs[("torchvision mobilenet_v2", fmt)] = (
            step_fn(torchvision.models.mobilenet_v2(num_classes=10), cl),
            images,
            labels,
        )
    runs[("mobilenets mobilenet_v2 cifar (32x32)", "channels_last")] = (
        step_fn(create_model("mobilenet_v2", num_classes=10, cifar=True), True),
        cifar_images,
        cifar_labels,
    )
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    for i in range(args.steps + 2):  # interleaved: step i of every model before step i + 1 of any
        for key, (step, x, y) in runs.items():
            elapsed = step(x, y)
            if i >= 2:
                times[key].append(elapsed)

    print(
        f"CPU training throughput, batch {args.batch_size}, {args.threads} threads, torch {torch.__version__}, "
        f"median of {args.steps} steps (input {args.resolution}x{args.resolution} unless stated)\n"
    )
    print("| model | memory format | images/s | ours / torchvision |\n|---|---|---|---|")
    for (name, fmt), ts in times.items():
        rate = args.batch_size / statistics.median(ts)
        ratio = ""
        if name == "mobilenets mobilenet_v2":
            theirs = args.batch_size / statistics.median(times[("torchvision mobilenet_v2", fmt)])
            ratio = f"{rate / theirs:.2f}x"
        print(f"| {name} | {fmt} | {rate:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
