"""LiteRT int8 of torchvision's MobileNetV2, several ways, scored on imagenet-sample's 1,000 images:

* ``pt2e``   - as ``export --format litert --int8`` ships it (PT2E, litert-torch's quantizer);
* ``gptq``   - GPTQ-rounded weights first (our ONNX path's rounding, on PT2E's per-channel symmetric
  grid, max|w| / 127, so PT2E's observer finds the same steps);
* ``search`` - PT2E, then each activation's scale searched against the network's output as our
  ONNX path's range search does (``ptq.RANGE_FACTORS``, kept where the KL to fp32 on the first 16
  calibration images falls), simulated in PyTorch on the converted graph before the file is written.

    python benchmarks/litert_int8_ways.py 64 pt2e,gptq,search      # calibration images, ways

Measured (AMD EPYC Zen 5, docs/benchmarks.md): pt2e 82.7 %, gptq 82.3 %, search 82.3 % (its KL on the
16 search images 0.0995 -> 0.0434, 225 s): neither reaches the ONNX path's 83.3-83.8 %.
"""

import collections
import sys
import time
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


def log_probabilities(module, images):
    with torch.no_grad():  # the exported graph is specialised to batch 1
        return torch.cat([module(image[None]) for image in images]).double().log_softmax(1)


def search_quantized(network, example, calibration, search_images=16):
    converted, quantizer = pt2e_quantized(network, example, calibration)
    images = calibration[:search_images].float()
    reference = log_probabilities(network, images)

    def loss():
        converted.recompile()
        current = log_probabilities(converted, images)
        return float((reference.exp() * (reference - current)).sum(1).mean())

    # One activation = the per-tensor quantize/dequantize nodes that carry its (scale, zero point):
    # PT2E shares them through ReLU6 and pooling, so they move together.
    groups = collections.defaultdict(list)
    for node in converted.graph.nodes:
        if node.op == "call_function" and "quantize_per_tensor" in str(node.target):
            groups[(node.args[1], node.args[2])].append(node)

    def set_scale(nodes, scale):
        for node in nodes:
            node.args = (node.args[0], scale, *node.args[2:])

    start = time.perf_counter()
    best = first = loss()
    for (scale, _), nodes in groups.items():  # graph order
        chosen = scale
        for factor in ptq.RANGE_FACTORS:
            set_scale(nodes, scale * factor)
            trial = loss()
            if trial < best:
                best, chosen = trial, scale * factor
        set_scale(nodes, chosen)
    converted.recompile()
    sys.__stderr__.write(f"search: KL on {len(images)} images {first:.4f} -> {best:.4f}, {len(groups)} activations, "
                         f"{time.perf_counter() - start:.0f} s\n")  # fmt: skip
    return converted, quantizer


WAYS = {"pt2e": pt2e_quantized, "gptq": gptq_quantized, "search": search_quantized}


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
        litert._quantized = WAYS[way]
        path = Path(f"v2-{way}.tflite")
        get_runtime("litert").export(model, path, info=info, precision="int8", calibration=calibration)
        network = load_exported(path)
        logits = torch.cat([torch.as_tensor(network(x)) for x, _ in batches])
        print(f"{way}: top-1 {100 * (logits.argmax(1) == labels).float().mean().item():.1f}%", flush=True)


if __name__ == "__main__":
    main()
