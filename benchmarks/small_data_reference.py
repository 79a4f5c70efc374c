"""A few hundred images: ``mobilenets train``'s defaults against a plain loop with torchvision's
reference-script settings, same images, same starting weights, same time, back to back.

    python benchmarks/small_data_reference.py detection --data-dir ../shared/data/coco128 --classes person \\
        --weights ../shared/data/weights/mobilenet_v2-b0353104.pth --out runs/person-vs-reference
    python benchmarks/small_data_reference.py segmentation --data-dir ../shared/data/coco128 --classes person \\
        --weights ../shared/data/weights/mobilenet_v2-b0353104.pth --out runs/person-seg-vs-reference

Ours: ``mobilenets train --model M --recipe R --classes ... --init-from WEIGHTS`` with nothing else
(``--ours "..."`` adds options; ``--ours-run DIR`` scores a finished run instead of training one).
Its wall-clock time, validation and set-up included, is the reference's training budget.

The reference is what torchvision's reference scripts (``references/detection``,
``references/segmentation``) would run, on our network: torchvision's SSDLite and DeepLabv3
builders take only its MobileNetV3, for which no ImageNet weights are here, and our
``ssdlite_mobilenet_v2`` / ``deeplabv3_mobilenet_v2`` are torchvision's ``SSD`` /
``DeepLabV3`` classes around the same MobileNetV2 body, so the networks are equal and only the
training differs:

* detection (``--model ssdlite320_mobilenet_v3_large``'s command): SGD momentum 0.9, weight decay
  4e-5 on every parameter, lr 0.15 for a batch of 8 x 24, scaled linearly to the batch here;
  a linear warm-up from 0.001x over the first epoch (at most 1,000 steps), then cosine per epoch;
  RandomIoUCrop + flip (``--data-augmentation ssdlite``); the loss is the model's; images without
  objects are left out of training, as its ``_coco_remove_images_without_annotations`` does.
* segmentation (``deeplabv3_mobilenet_v3_large``'s): SGD momentum 0.9, weight decay 1e-4, lr 0.02
  for a batch of 8 x 4 scaled linearly, poly decay (power 0.9) per step, no warm-up; random
  scale 0.5-2x, crop and flip; cross-entropy ignoring 255 (+ 0.5 x the auxiliary head's, where
  the model has one).

The reference's schedule must know its length: its first epoch is timed and the rest of the
budget is divided into whole epochs. Both are scored by the library's evaluators (pycocotools'
COCOeval; the confusion-matrix IoU) on the validation split.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mobilenets._table import format_table  # noqa: E402
from mobilenets.cli import main as cli_main  # noqa: E402
from mobilenets.data import make_loader  # noqa: E402
from mobilenets.detection.data import collate as detection_collate  # noqa: E402
from mobilenets.detection.data import detection_transforms, find_detection_data  # noqa: E402
from mobilenets.detection.evaluate import evaluate_detector  # noqa: E402
from mobilenets.models import create_model  # noqa: E402
from mobilenets.models.ssd import SSD_SPECS  # noqa: E402
from mobilenets.runtimes.bench import cpu_description  # noqa: E402
from mobilenets.segmentation.data import IGNORE, find_segmentation_data, segmentation_transforms  # noqa: E402
from mobilenets.segmentation.data import collate as segmentation_collate  # noqa: E402
from mobilenets.segmentation.evaluate import evaluate_segmenter  # noqa: E402
from mobilenets.weights import load_weights  # noqa: E402

TASKS = {
    # model, our recipe, resolution, batch, the reference's lr and the batch it was set for, weight decay
    "detection": ("ssdlite_mobilenet_v2", "coco-ssdlite", 320, 16, 0.15, 8 * 24, 4e-5),
    "segmentation": ("deeplabv3_mobilenet_v2", "seg-small", 320, 8, 0.02, 8 * 4, 1e-4),
}


def run_ours(args) -> dict:
    """Train with the library's defaults (or read a finished run); its summary and headline metric."""
    out = Path(args.ours_run or Path(args.out) / "ours")
    if not args.ours_run:
        model, recipe, *_ = TASKS[args.task]
        command = ["train", "--model", model, "--recipe", recipe, "--data-dir", args.data_dir, "--init-from",
                   args.weights, "--out", str(out), "--no-progress", *(["--classes", args.classes] if args.classes
                   else []), *shlex.split(args.ours)]  # fmt: skip
        print("mobilenets " + shlex.join(command), flush=True)
        if cli_main(command) not in (0, None):
            raise SystemExit("our run failed")
    summary = json.loads((out / "summary.json").read_text())
    return summary


def _detection(args, resolution):
    spec = SSD_SPECS[TASKS["detection"][0]]
    data = find_detection_data(
        args.data_dir,
        train_transforms=detection_transforms("ssdlite", resolution, train=True, fill=spec.image_mean),
        val_transforms=detection_transforms("ssdlite", resolution, train=False, fill=spec.image_mean),
        classes=args.classes,
    )
    # torchvision's detection reference trains only on images with annotations
    # (references/detection/coco_utils.py: _coco_remove_images_without_annotations)
    data.train.drop_empty()
    return data.train, data.val, data.classes, detection_collate


def _segmentation(args, resolution):
    data = find_segmentation_data(
        args.data_dir,
        train_transforms=segmentation_transforms(resolution, train=True),
        val_transforms=segmentation_transforms(resolution, train=False),
        classes=args.classes,
    )
    return data.train, data.val, data.classes, segmentation_collate


def _loss(task: str, model, images, targets) -> torch.Tensor:
    if task == "detection":
        losses = model(list(images), [{"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"]}
                                      for t in targets])  # fmt: skip
        return sum(losses.values())
    outputs = model(images.as_subclass(torch.Tensor))
    masks = targets.as_subclass(torch.Tensor)
    loss = F.cross_entropy(outputs["out"], masks, ignore_index=IGNORE)
    if "aux" in outputs:
        loss = loss + 0.5 * F.cross_entropy(outputs["aux"], masks, ignore_index=IGNORE)
    return loss


def run_reference(args, budget_s: float) -> dict:
    """The plain loop for ``budget_s`` seconds of wall-clock; its metrics on the validation split."""
    task = args.task
    name, _, resolution, batch, base_lr, base_batch, decay = TASKS[task]
    train_set, val_set, classes, collate = (_detection if task == "detection" else _segmentation)(args, resolution)
    torch.manual_seed(0)
    model = create_model(name, num_classes=len(classes), resolution=resolution)
    load_weights(model.backbone.body, args.weights)
    lr = base_lr * batch / base_batch
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=decay)
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch, shuffle=True, num_workers=2,
                                         collate_fn=collate, drop_last=task == "segmentation")  # fmt: skip
    steps_per_epoch = len(loader)
    warmup = min(1000, steps_per_epoch - 1) if task == "detection" else 0
    started, epochs, step, epoch = time.perf_counter(), None, 0, 0
    model.train()
    while epochs is None or epoch < epochs:
        for images, targets in loader:
            if task == "detection":
                factor = (0.001 + (1 - 0.001) * step / warmup if step < warmup else 1.0) if epoch == 0 else \
                    0.5 * (1 + math.cos(math.pi * (epoch - 1) / max(1, epochs - 1)))  # fmt: skip
            else:
                factor = (1 - step / (steps_per_epoch * (epochs or 10**9))) ** 0.9
            for group in optimizer.param_groups:
                group["lr"] = lr * factor
            loss = _loss(task, model, images, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
        epoch += 1
        if epochs is None:  # the first epoch timed: the schedule's length
            epochs = max(1, int(budget_s / (time.perf_counter() - started)))
            print(f"reference: {epochs} epochs in the budget of {budget_s:.0f} s", flush=True)
    seconds = time.perf_counter() - started
    val_loader = make_loader(val_set, 1 if task == "detection" else batch, workers=2, collate_fn=collate)
    if task == "detection":
        metrics = evaluate_detector(model, val_loader)
    else:
        metrics = evaluate_segmenter(model, val_loader, len(classes), resolution, classes=classes)
    return {"seconds": seconds, "epochs": epochs, "lr": lr, **metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--weights", required=True, help="torchvision's MobileNetV2 ImageNet state dict")
    parser.add_argument("--classes", help="as mobilenets train --classes")
    parser.add_argument("--out", required=True, help="our run goes to OUT/ours, the table to OUT/reference.json")
    parser.add_argument("--ours", default="", help="extra `mobilenets train` options, quoted")
    parser.add_argument("--ours-run", help="a finished run directory to compare instead of training one")
    parser.add_argument("--seconds", type=float, help="the reference's budget (default: our run's wall-clock)")
    args = parser.parse_args()
    ours = run_ours(args)
    budget = args.seconds or ours["wall_seconds"]
    reference = run_reference(args, budget)
    key, label = ("map50", "mAP50") if args.task == "detection" else ("miou", "mIoU")
    rows = [["ours (defaults)", f"{100 * ours[key]:.2f}", f"{ours['wall_seconds']:.0f}", str(ours["epochs"])],
            ["torchvision reference settings", f"{100 * reference[key]:.2f}", f"{reference['seconds']:.0f}",
             str(reference["epochs"])]]  # fmt: skip
    print(f"{cpu_description()}, torch {torch.__version__}; {args.task}, {args.classes or 'all classes'}")
    print(format_table(["loop", f"val {label} (%)", "seconds", "epochs"], rows))
    if args.task == "segmentation":
        print("reference per-class IoU:", dict(zip(reference["classes"], reference["per_class_iou"])))
    ratio = ours[key] / reference[key] if reference[key] else math.inf
    print(f"ours / reference: {ratio:.2f}x")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    reference = {k: v for k, v in reference.items() if isinstance(v, (int, float, str, list))}
    (Path(args.out) / "reference.json").write_text(json.dumps({"ours": ours, "reference": reference}, indent=2))


if __name__ == "__main__":
    main()
