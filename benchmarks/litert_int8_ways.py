"""LiteRT int8 of torchvision's MobileNetV2, two ways, scored on imagenet-sample's 1,000 images: PT2E as
``export --format litert --int8`` ships it, and with GPTQ-rounded weights first (our ONNX path's rounding, on
PT2E's per-channel symmetric grid, max|w| / 127, so PT2E's observer finds the same steps).

    python benchmarks/litert_int8_gptq.py 64 pt2e,gptq      # calibration images, ways
"""

import sys
from pathlib import Path

import torch

import mobilenets
from mobilenets.data import calibration_images, eval_dataset, make_loader
from mobilenets.export import ptq
from mobilenets.export.onnx import fold_batchnorm
from mobilenets.predict import default_data_info
from mobilenets.runtimes import get_runtime, litert, load_exported
from mobilenets.runtimes.bench import cpu_description

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pt2e_quantized = litert._quantized


def gptq_quantized(network, example, calibration):
    folded, _ = fold_batchnorm(network)  # PT2E would fold them; GPTQ rounds the folded weights
    rounded, _ = ptq.round_weights(folded, calibration, dense_qmax=127, depthwise_qmax=127, method="gptq")
    return pt2e_quantized(rounded, example, calibration)


def main() -> None:
    count, ways = int(sys.argv[1]), sys.argv[2].split(",")
    model = mobilenets.create_model("mobilenet_v2", weights=DATA / "weights" / "mobilenet_v2-b0353104.pth").eval()
    info = default_data_info(model)
    calibration = calibration_images(DATA / "coco128" / "images", style="imagenet", resolution=224, count=count)
    dataset, _ = eval_dataset(DATA / "imagenet-sample", style="imagenet", resolution=224)
    batches = list(make_loader(dataset, 50, workers=2))
    labels = torch.cat([y for _, y in batches])
    print(cpu_description(), f"torch {torch.__version__}; {count} calibration images")
    for way in ways:
        litert._quantized = pt2e_quantized if way == "pt2e" else gptq_quantized
        path = Path(f"v2-{way}.tflite")
        get_runtime("litert").export(model, path, info=info, precision="int8", calibration=calibration)
        network = load_exported(path)
        logits = torch.cat([torch.as_tensor(network(x)) for x, _ in batches])
        print(f"{way}: top-1 {100 * (logits.argmax(1) == labels).float().mean().item():.1f}%", flush=True)


if __name__ == "__main__":
    main()
