"""LiteRT int8 of torchvision's MobileNetV2, several ways, scored on imagenet-sample's 1,000 images:

* ``pt2e``   - as ``export --format litert --int8`` ships it (PT2E, litert-torch's quantizer);
* ``gptq``   - GPTQ-rounded weights first (our ONNX path's rounding, on PT2E's per-channel symmetric
  grid, max|w| / 127, so PT2E's observer finds the same steps);
* ``float-classifier`` - PT2E with the final ``Linear`` left unquantized (our ONNX path keeps logits float);
* ``percentile-P`` - activation ranges cut at the P-th percentile of PT2E's own histogram (our ONNX path's
  rule: one end of a never-negative tensor, both ends of a signed one) instead of its L2 search;
* ``search`` - PT2E, then each activation's scale searched against the network's output as our
  ONNX path's range search does (``ptq.RANGE_FACTORS``, kept where the KL to fp32 on the first 16
  calibration images falls), simulated in PyTorch on the converted graph before the file is written.

    python benchmarks/litert_int8_ways.py 64 pt2e,gptq,float-classifier,percentile-99.99,search

(calibration images, ways).  Measured (AMD EPYC Zen 5, docs/benchmarks.md): pt2e 82.7 %, gptq 82.3 %,
float-classifier 82.5 %, percentile-99.9/99.99/99.999 71.7/82.0/81.2 %, search 82.3 % (its KL on the 16
search images 0.0995 -> 0.0434, 225 s): none reaches the ONNX path's 83.3-83.8 % (fp32 83.8 %).
"""

import collections
import functools
import sys
import time
from pathlib import Path

import torch
from imagenet_v2 import torchvision_v2_and_images  # benchmarks/, beside this script

from mobilenets.export import ptq
from mobilenets.export.onnx import fold_batchnorm
from mobilenets.runtimes import get_runtime, litert, load_exported
from mobilenets.runtimes.bench import cpu_description

pt2e_quantized = litert._quantized


def gptq_quantized(network, example, calibration):
    folded, _ = fold_batchnorm(network)  # PT2E would fold them; GPTQ rounds the folded weights
    rounded, _ = ptq.round_weights(folded, calibration, dense_qmax=127, depthwise_qmax=127, method="gptq")
    return pt2e_quantized(rounded, example, calibration)


def quantized_with(network, example, calibration, *, float_classifier=False, percentile=None):
    """PT2E as litert._quantized does it, with the classifier left float or percentile activation ranges."""
    import dataclasses

    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e import HistogramObserver
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    class PercentileObserver(HistogramObserver):
        def _non_linear_param_search(self):
            cdf = self.histogram.double().cumsum(0) / self.histogram.double().sum()
            low, high = float(self.min_val), float(self.max_val)
            edges = torch.linspace(low, high, self.bins + 1, dtype=torch.float64)
            cut = (100.0 - percentile) / (200.0 if low < 0 else 100.0)
            top = edges[
                min(int(torch.searchsorted(cdf, torch.tensor([1.0 - cut], dtype=torch.float64))) + 1, self.bins)
            ]
            bottom = edges[int(torch.searchsorted(cdf, torch.tensor([cut], dtype=torch.float64)))] if low < 0 else low
            return torch.tensor(float(bottom)).reshape(self.min_val.shape), top.float().reshape(self.max_val.shape)

    config = get_symmetric_quantization_config(is_per_channel=True)
    if percentile is not None:
        ranges = PercentileObserver.with_args(eps=2**-12)
        spec = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=ranges)
        config = dataclasses.replace(config, input_activation=spec, output_activation=spec)
    quantizer = PT2EQuantizer().set_global(config)
    if float_classifier:  # nn_module_stack records types by name in this torch
        quantizer.module_type_config["torch.nn.modules.linear.Linear"] = None
    prepared = prepare_pt2e(torch.export.export(network, (example,)).module(), quantizer)
    with torch.no_grad():
        for image in calibration:
            prepared(image[None].float())
    return convert_pt2e(prepared, fold_quantize=False), quantizer


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
    NOTES.append(f"KL on {len(images)} images {first:.4f} -> {best:.4f}, {len(groups)} activations, "
                 f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    return converted, quantizer


NOTES = []  # what a way reports (the export silences output while it converts)
WAYS = {
    "pt2e": pt2e_quantized,
    "gptq": gptq_quantized,
    "search": search_quantized,
    "float-classifier": functools.partial(quantized_with, float_classifier=True),
}


def main() -> None:
    count, ways = int(sys.argv[1]), sys.argv[2].split(",")
    model, info, calibration, batches, labels = torchvision_v2_and_images(count)
    print(cpu_description(), f"torch {torch.__version__}; {count} calibration images")
    for way in ways:
        if way.startswith("percentile-"):
            litert._quantized = functools.partial(quantized_with, percentile=float(way.split("-")[1]))
        else:
            litert._quantized = WAYS[way]
        path = Path(f"v2-{way}.tflite")
        get_runtime("litert").export(model, path, info=info, precision="int8", calibration=calibration)
        network = load_exported(path)
        logits = torch.cat([torch.as_tensor(network(x)) for x, _ in batches])
        notes = f" ({NOTES.pop()})" if NOTES else ""
        print(f"{way}: top-1 {100 * (logits.argmax(1) == labels).float().mean().item():.1f}%{notes}", flush=True)


if __name__ == "__main__":
    main()
