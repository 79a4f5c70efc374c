"""Where LiteRT int8 loses MobileNetV2's accuracy: each tensor of the int8 file against the same tensor
of the fp32 file (LiteRT's interpreter keeps every intermediate tensor; tensors matched by the module path
litert-torch names them with, and shape), as a signal-to-quantization-noise ratio on imagenet-sample images.

    python benchmarks/litert_int8_layers.py 64 16      # calibration images, images scored

Measured (AMD EPYC Zen 5, docs/benchmarks.md, `export --format litert --int8` as shipped, 64 coco128
calibration images, 16 imagenet-sample images): 45 dB at the input, 37 dB after the first conv, 20 dB
after block 1, 12-15 dB through blocks 3-13, then a step at block 14's 1x1 expansion (14.0 -> 7.8 dB, 14x14x576)
and 3.7-9 dB for blocks 15-17; 13 dB at the logits.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from imagenet_v2 import torchvision_v2_and_images  # benchmarks/, beside this script

from mobilenets.runtimes import get_runtime
from mobilenets.runtimes.bench import cpu_description


def tensors(path: Path, images: torch.Tensor) -> dict[str, np.ndarray]:
    """Every float or int8 tensor of the file (int8 dequantized) on each image, by module path and shape."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    feed = interpreter.get_input_details()[0]
    found: dict[str, list[np.ndarray]] = {}
    for image in images:
        x = image[None].numpy()
        if feed["dtype"] != np.float32:
            scale, zero = feed["quantization"]
            x = np.clip(np.round(x / scale) + zero, -128, 127).astype(feed["dtype"])
        interpreter.set_tensor(feed["index"], x)
        interpreter.invoke()
        for detail in interpreter.get_tensor_details():
            try:
                value = interpreter.get_tensor(detail["index"])
            except ValueError:  # a tensor the interpreter did not keep
                continue
            if value.dtype == np.int8 and detail["quantization"][0]:
                scale, zero = detail["quantization"]
                value = (value.astype(np.float32) - zero) * scale
            elif value.dtype != np.float32:
                continue
            found.setdefault(detail["name"].split(";")[0] + str(tuple(value.shape)), []).append(value.copy())
    return {name: np.stack(values) for name, values in found.items()}


def main() -> None:
    count, scored = int(sys.argv[1]), int(sys.argv[2])
    model, info, calibration, batches, _ = torchvision_v2_and_images(count)
    print(cpu_description(), f"{count} calibration images, {scored} scored")
    runtime = get_runtime("litert")
    with tempfile.TemporaryDirectory() as folder:
        fp32, int8 = Path(folder) / "f.tflite", Path(folder) / "q.tflite"
        runtime.export(model, fp32, info=info)
        runtime.export(model, int8, info=info, precision="int8", calibration=calibration)
        images = torch.cat([x for x, _ in batches])[:scored]
        reference, quantized = tensors(fp32, images), tensors(int8, images)
    for name, values in quantized.items():
        if name in reference and values.ndim >= 3:
            signal = float((reference[name] ** 2).mean())
            noise = max(float(((reference[name] - values) ** 2).mean()), 1e-20)
            print(f"{10 * np.log10(signal / noise):6.1f} dB  {'/'.join(name.split('/')[-2:])[-100:]}")


if __name__ == "__main__":
    main()
