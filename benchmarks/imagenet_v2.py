"""What the int8 runtime benchmarks share: torchvision's ImageNet MobileNetV2, its data info, ``count``
coco128 calibration photos, and imagenet-sample's 1,000 labelled images in batches of 50."""

from pathlib import Path

import torch

import mobilenets
from mobilenets.data import calibration_images, eval_dataset, make_loader
from mobilenets.predict import default_data_info

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def torchvision_v2_and_images(count: int):
    """(model in eval mode, its data info, calibration images, imagenet-sample batches, their labels)."""
    model = mobilenets.create_model("mobilenet_v2", weights=DATA / "weights" / "mobilenet_v2-b0353104.pth").eval()
    calibration = calibration_images(DATA / "coco128" / "images", style="imagenet", resolution=224, count=count)
    dataset, _ = eval_dataset(DATA / "imagenet-sample", style="imagenet", resolution=224)
    batches = list(make_loader(dataset, 50, workers=2))
    return model, default_data_info(model), calibration, batches, torch.cat([y for _, y in batches])
