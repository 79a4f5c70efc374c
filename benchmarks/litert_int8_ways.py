"""LiteRT int8 of torchvision's MobileNetV2, several ways, scored on imagenet-sample's 1,000 images:

* ``default`` - as ``export --format litert --int8`` ships it (PT2E, litert-torch's quantizer, ranges
  cut at the 99.99th percentile - the default since session 8);
* ``pt2e``   - PT2E with litert-torch's quantizer as it comes (``--calibration-method histogram``: its
  observer's L2-minimising ranges; what shipped before session 8);
* ``gptq``   - GPTQ-rounded weights first (our ONNX path's rounding, on PT2E's per-channel symmetric
  grid, max|w| / 127, so PT2E's observer finds the same steps);
* ``float-classifier`` - PT2E with the final ``Linear`` left unquantized (our ONNX path keeps logits float);
* ``percentile-P`` - activation ranges cut at the P-th percentile of PT2E's own histogram (our ONNX path's
  rule: one end of a never-negative tensor, both ends of a signed one) instead of its L2 search;
* ``biascorr`` - PT2E, then each conv/linear bias moved by the mean shift int8 puts on its output
  channels (empirical bias correction, as our ONNX path's ``--bias-correction``), layer after layer;
* ``relu6`` - PT2E, then each conv output that a ReLU6 reads quantized with the ReLU6 output's range
  (litert-torch's quantizer does not fuse conv and ReLU6, so the conv output had a range of its own);
* ``float-module-NAME[+NAME...]`` - PT2E with those modules left float (``features.14.expand``: where
  ``litert_int8_layers.py`` sees the step);
* ``dynamic`` - PT2E's dynamic-range config: int8 weights, activations float in the file (quantized by
  the kernels at run time);
* ``aeq-ALGORITHM`` - the fp32 file quantized by Google's AI Edge Quantizer (``ai-edge-quantizer``,
  static int8, its activation ranges observed in LiteRT's own interpreter; ALGORITHM for the weights:
  ``min_max_uniform_quantize``, ``MSE``, ``OCTAV``); ``aeq-histogram``: PT2E's histogram ranges instead,
  observed on LiteRT's float tensors; ``aeq-histogram-search-N``: then our ONNX path's range search, each
  trial quantized and run in LiteRT itself against fp32 on N calibration images;
* ``pool-range`` - PT2E with the global average pool's output quantized with a range of its own (the
  quantizer shares the pool's input range, 0.076 a step, with the pooled features);
* ``distill-N`` - the export's ``--distill-steps N``: the calibrated int8 network's weights trained for
  N batches of the calibration images to give fp32's outputs (:mod:`mobilenets.export.pt2e_distill`);
* ``search`` - PT2E, then each activation's scale searched against the network's output as our
  ONNX path's range search does (``ptq.RANGE_FACTORS``, kept where the KL to fp32 on the first 16
  calibration images falls), simulated in PyTorch on the converted graph before the file is written.

    python benchmarks/litert_int8_ways.py 64 pt2e,gptq,float-classifier,percentile-99.99,search

(calibration images, ways).  Measured (AMD EPYC Zen 5, docs/benchmarks.md): pt2e 82.7 %, gptq 82.3 %,
float-classifier 82.5 %, percentile-99.9/99.99/99.999 71.7/82.0/81.2 %, search 82.3 % (its KL on the 16
search images 0.0995 -> 0.0434, 225 s): none reaches the ONNX path's 83.3-83.8 % (fp32 83.8 %).  biascorr
moves the outputs away from fp32 (KL on 16 calibration images 0.109 -> 0.153; mean shift per layer 0.0057)
and the export's own check refuses the file (0.31 relative against the 0.3 bound).  relu6 82.7 % (35 conv
outputs moved; no change: LiteRT's converter fuses the pair itself).  PT2E's converted graph run in PyTorch
scores 80.8 % where LiteRT's file of it scores 82.7 %: the simulation is not what LiteRT computes, which is
why fits made on it (search, biascorr) do not carry to the file.  float-module-features.14.expand (where
litert_int8_layers.py sees the step) 81.5 %, blocks 14-18 float 81.7 %: a float island costs more than it saves.
dynamic 83.7 % but 10.5 ms against fp32's 1.89 and pt2e's 0.91 (ai-edge-litert 2.3's XNNPACK does not take
the dynamic-range convolutions, so LiteRT's reference hybrid kernels run them): accurate, not a fast path.
aeq-min_max_uniform_quantize 59.1 % at 1.01 ms (MSE 60.1 %, OCTAV 58.6 %: they choose weight ranges only; the
activations' plain min/max ranges are what lose it); aeq-histogram 82.1 %, aeq-histogram-search-64 82.1 % (KL
on its 64 images 0.0549 -> 0.0393, 2 min; with 16 images 0.048 -> 0.028 and 82.5 %): a fit made in LiteRT's own
kernels does not carry to unseen images either, so the loss is not a simulation artefact.
pool-range 82.3 % (pooled features now 0.017 a step): the pool's rounding was not the loss.  (The file's
structure, read with ai-edge-quantizer's flatbuffer tools: from block 5 on, litert-torch's converter leaves the
residual adds in float between DEQUANTIZE and QUANTIZE ops, 13 + 9 of them; the logits come out int8, 0.136 a
step.)  After the ways, every file written is timed in a process of its own, in turns (as ``export --format
auto`` times candidates).

Every figure above was measured with 64 calibration images, and pt2e's depends on how many: 32 / 64 / 128 / 200
images gave 81.3 / 82.7 / 79.5 / 81.7 %, where the percentile cut (``default`` since session 8) gave
82.8 / 82.0 / 81.7 / 82.3 % (``python benchmarks/litert_int8_ways.py N pt2e,default`` for each N; mean 81.3
against 82.2, spread 3.2 against 1.1 points; the files' times alike, 0.9-1.05 ms against fp32's 2.0).
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
from mobilenets.export.ort import ExportError
from mobilenets.runtimes import get_runtime, litert, load_exported
from mobilenets.runtimes.auto import best_round_median
from mobilenets.runtimes.bench import cpu_description
from mobilenets.runtimes.timing import time_in_processes

SHIPPED = litert._quantized  # (converted, quantizer, what a fit reports); the ways below return the first two


def shipped_quantized(network, example, calibration, **options):
    converted, quantizer, _ = SHIPPED(network, example, calibration, **options)
    return converted, quantizer


pt2e_quantized = functools.partial(shipped_quantized, method="histogram")


def gptq_quantized(network, example, calibration):
    folded, _ = fold_batchnorm(network)  # PT2E would fold them; GPTQ rounds the folded weights
    rounded, _ = ptq.round_weights(folded, calibration, dense_qmax=127, depthwise_qmax=127, method="gptq")
    return pt2e_quantized(rounded, example, calibration)


def quantized_with(
    network, example, calibration, *, float_classifier=False, percentile=None, float_modules=(), dynamic=False
):
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

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    if percentile is not None:
        ranges = PercentileObserver.with_args(eps=2**-12)
        spec = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=ranges)
        config = dataclasses.replace(config, input_activation=spec, output_activation=spec)
    quantizer = PT2EQuantizer().set_global(config)
    if float_classifier:  # nn_module_stack records types by name in this torch
        quantizer.module_type_config["torch.nn.modules.linear.Linear"] = None
    for name in float_modules:
        # set_module_name refuses None; and litert-torch 0.10's name filter cuts 10 characters ("L__self___") off
        # keys that this torch writes with 9 ("L__self__features.14.expand"), so it matches "eatures.14.expand"
        quantizer.module_name_config[name[1:]] = None
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


def _layer_means(outputs):
    """Per-channel mean over batch and space of each conv/linear output, in forward order."""
    return [torch.cat(chunks).double().mean(dim=[d for d in range(chunks[0].dim()) if d != 1]) for chunks in outputs]


def _float_layer_outputs(network, images):
    """Each conv/linear output of ``network`` with its batch norms folded: what PT2E's folded graph computes."""
    folded, _ = fold_batchnorm(network)
    outputs, hooks = [], []
    for layer in folded.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            hooks.append(
                layer.register_forward_hook(lambda _m, _i, out: outputs.append(out.clone()))
            )  # ReLU6 works in place
    with torch.no_grad():
        for image in images:
            folded(image[None])
    for hook in hooks:
        hook.remove()
    per_layer = len(outputs) // len(images)
    return [outputs[i::per_layer] for i in range(per_layer)]


def _bias_of(converted, node):
    """The float bias constant a conv/linear node of PT2E's converted graph adds."""
    bias = node.args[2] if len(node.args) > 2 else None
    if bias is None or bias.op != "get_attr":
        raise RuntimeError(f"{node.name} has no bias constant to correct")
    owner, _, name = bias.target.rpartition(".")
    return getattr(converted.get_submodule(owner) if owner else converted, name)


def bias_corrected(network, example, calibration):
    """PT2E, then each conv/linear bias moved by the mean shift int8 puts on its output channels
    (empirical bias correction, Nagel et al. 2019, as our ONNX path's ``ptq.correct_biases``),
    measured on the calibration images against the float network, layer after layer: the graph
    runs node by node over all images, so each layer's shift is measured with its inputs corrected."""
    converted, quantizer = pt2e_quantized(network, example, calibration)
    images = calibration.float()
    reference = iter(_layer_means(_float_layer_outputs(network, images)))
    nodes = list(converted.graph.nodes)
    last_use = {n: i for i, node in enumerate(nodes) for n in node.all_input_nodes}
    values, moved = {}, []
    with torch.no_grad():
        for i, node in enumerate(nodes):
            if node.op == "placeholder":
                values[node] = [image[None] for image in images]
            elif node.op == "get_attr":
                owner, _, name = node.target.rpartition(".")
                values[node] = [getattr(converted.get_submodule(owner) if owner else converted, name)] * len(images)
            elif node.op == "call_function":
                outputs = []
                for k in range(len(images)):
                    args = torch.fx.node.map_arg(node.args, lambda n, k=k: values[n][k])
                    kwargs = torch.fx.node.map_arg(node.kwargs, lambda n, k=k: values[n][k])
                    outputs.append(node.target(*args, **kwargs))
                if node.target in LAYER_OPS:
                    shift = _layer_means([outputs])[0] - next(reference)
                    _bias_of(converted, node).data -= shift.float()
                    view = shift.float().view(1, -1, *[1] * (outputs[0].dim() - 2))
                    outputs = [out - view for out in outputs]
                    moved.append(float(shift.abs().mean()))
                values[node] = outputs
            for n in node.all_input_nodes:
                if last_use[n] == i:
                    del values[n]
    NOTES.append(f"mean |shift| per layer {sum(moved) / len(moved):.4f} over {len(moved)} layers")
    return converted, quantizer


def pooled_own_range(network, example, calibration):
    """PT2E with the global average pool's output given a range of its own: litert-torch's quantizer
    shares the pool's input range with its output, so the 1280 pooled features (averages of 49 ReLU6
    outputs, most well under 1) are rounded to the step of the 0-10 range before them."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=True)
    pools = (torch.ops.aten.adaptive_avg_pool2d.default, torch.ops.aten.mean.dim)

    class OwnPoolRange(PT2EQuantizer):
        def annotate(self, model):
            model = super().annotate(model)
            for node in model.graph.nodes:
                if node.op == "call_function" and node.target in pools:
                    node.meta["quantization_annotation"].output_qspec = config.output_activation
                    NOTES.append(f"{node.target} has its own output range")
            return model

    quantizer = OwnPoolRange().set_global(config)
    prepared = prepare_pt2e(torch.export.export(network, (example,)).module(), quantizer)
    with torch.no_grad():
        for image in calibration:
            prepared(image[None].float())
    return convert_pt2e(prepared, fold_quantize=False), quantizer


def _is(node, name):
    return node.op == "call_function" and name in str(node.target)


def activation_ranges_through_relu6(network, example, calibration):
    """PT2E, then each conv output that a ReLU6 (``hardtanh``) reads quantized with the ReLU6
    output's (scale, zero point) instead of its own: litert-torch's quantizer does not fuse the
    pair, so the conv output got a range of its own that spans the negative values ReLU6 then
    drops; with the ReLU6 output's range the clip happens in the rounding, as a fused activation's."""
    converted, quantizer = pt2e_quantized(network, example, calibration)
    moved = 0
    for node in converted.graph.nodes:
        if not _is(node, "hardtanh"):
            continue
        dequantize = node.args[0]
        after = [user for user in node.users if _is(user, "quantize_per_tensor")]
        if not (_is(dequantize, "dequantize_per_tensor") and len(after) == 1):
            continue
        before = dequantize.args[0]
        if not (_is(before, "quantize_per_tensor") and len(before.args[0].users) == 1):
            continue
        scale, zero_point = after[0].args[1:3]
        for quantizer_node in (before, *before.users):  # the quantize and every dequantize of it
            quantizer_node.args = (quantizer_node.args[0], scale, zero_point, *quantizer_node.args[3:])
        moved += 1
    converted.recompile()
    NOTES.append(f"{moved} conv outputs take their ReLU6's range")
    return converted, quantizer


LAYER_OPS = (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)
NOTES = []  # what a way reports (the export silences output while it converts)
WAYS = {
    "default": shipped_quantized,
    "pt2e": pt2e_quantized,
    "gptq": gptq_quantized,
    "search": search_quantized,
    "biascorr": bias_corrected,
    "relu6": activation_ranges_through_relu6,
    "float-classifier": functools.partial(quantized_with, float_classifier=True),
    "dynamic": functools.partial(quantized_with, dynamic=True),
    "pool-range": pooled_own_range,
}


def aeq_quantized(model, info, calibration, path, way):
    """The fp32 file quantized by Google's AI Edge Quantizer (static int8 weights and activations).
    ``aeq-ALGORITHM``: its own ranges (moving min/max observed in LiteRT's interpreter), ALGORITHM for
    the weights; ``aeq-histogram``: each activation's range from PT2E's histogram observer, fed the
    same LiteRT tensors; ``aeq-histogram-search-N``: those ranges, then each tried at RANGE_FACTORS
    times its size and kept where the KL to fp32 on the first N calibration images falls - every
    trial quantized by the quantizer and run in LiteRT's own kernels, so what is fitted is what ships."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    get_runtime("litert").export(model, path, info=info, precision="fp32")
    fp32 = path.read_bytes()
    signature, names = next(iter(Interpreter(model_content=fp32).get_signature_list().items()))
    algorithm = "min_max_uniform_quantize" if way.startswith("aeq-histogram") else way.split("-", 1)[1]
    quantize = quantizer.Quantizer(str(path))
    quantize.load_quantization_recipe(recipe.static_wi8_ai8(algorithm_key=algorithm))
    samples = [{names["inputs"][0]: image[None].float().numpy()} for image in calibration]  # (1, C, H, W)
    ranges = quantize.calibrate({signature: samples}, num_threads=2)
    if way.startswith("aeq-histogram"):
        ranges = histogram_ranges(fp32, ranges, calibration)
    if way.startswith("aeq-histogram-search-"):
        images = calibration[: int(way.rsplit("-", 1)[1])]
        reference = litert_log_probabilities(fp32, images, litert.sidecar_path(path))

        def kl(candidate):
            file = quantize.quantize(candidate, enable_progress_report=False).quantized_model
            current = litert_log_probabilities(file, images, litert.sidecar_path(path))
            return float((reference.exp() * (reference - current)).sum(1).mean())

        best = first = kl(ranges)
        for name in list(ranges):  # graph order
            start = kept = ranges[name]
            for factor in ptq.RANGE_FACTORS:
                ranges[name] = {**start, "min": start["min"] * factor, "max": start["max"] * factor}
                trial = kl(ranges)
                if trial < best:
                    best, kept = trial, ranges[name]
            ranges[name] = kept
        NOTES.append(f"KL on {len(images)} images {first:.4f} -> {best:.4f}")
    path.write_bytes(quantize.quantize(ranges, enable_progress_report=False).quantized_model)


def histogram_ranges(fp32, ranges, calibration):
    """Each tensor's (min, max) replaced by PT2E's histogram observer's choice (the range whose int8
    rounding errs least in L2), observed on LiteRT's own float tensors of ``calibration``."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from torchao.quantization.pt2e import HistogramObserver

    plain = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES  # XNNPACK would keep its tensors to itself
    interpreter = Interpreter(
        model_content=fp32, experimental_preserve_all_tensors=True, experimental_op_resolver_type=plain
    )
    interpreter.allocate_tensors()
    index = {detail["name"]: detail["index"] for detail in interpreter.get_tensor_details()}
    observers = {name: HistogramObserver(dtype=torch.qint8, quant_min=-128, quant_max=127, eps=2**-12)
                 for name in ranges}  # fmt: skip
    for image in calibration:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None].float().numpy())
        interpreter.invoke()
        for name, observer in observers.items():
            observer(torch.from_numpy(np.array(interpreter.get_tensor(index[name]))))
    chosen = {}
    for name, qsv in ranges.items():
        low, high = (float(end) for end in observers[name]._non_linear_param_search())
        low, high = np.full_like(qsv["min"], min(low, 0.0)), np.full_like(qsv["max"], max(high, 0.0))
        chosen[name] = {**qsv, "min": low, "max": high}
    return chosen


def litert_log_probabilities(content, images, sidecar):
    """Class log-probabilities of a .tflite (bytes) on ``images``, through its input/output scales."""
    path = Path("search-trial.tflite")
    path.write_bytes(content)
    litert.sidecar_path(path).write_text(sidecar.read_text())
    return torch.as_tensor(load_exported(path)(images.float())).double().log_softmax(1)


def _quantizer_for(way):
    """The export options a way passes, after pointing the export's PT2E step at the way's own."""
    if way.startswith("distill-"):  # e.g. distill-300: the export's own option
        litert._quantized = SHIPPED
        return {"distill_steps": int(way.split("-")[1])}
    if way.startswith("float-module-"):  # e.g. float-module-features.14.expand
        chosen = functools.partial(quantized_with, float_modules=way.split("-", 2)[2].split("+"))
    elif way.startswith("percentile-"):
        chosen = functools.partial(quantized_with, percentile=float(way.split("-")[1]))
    else:
        chosen = WAYS[way]
    # the export passes its calibration method and percentile; a way sets its own ranges
    litert._quantized = lambda network, example, images, *, chosen=chosen, **_: (*chosen(network, example, images), {})
    return {}


def main() -> None:
    count, ways = int(sys.argv[1]), sys.argv[2].split(",")
    model, info, calibration, batches, labels = torchvision_v2_and_images(count)
    print(cpu_description(), f"torch {torch.__version__}; {count} calibration images")
    files = {"fp32": ("litert", "fp32", Path("v2-fp32.tflite"))}
    get_runtime("litert").export(model, files["fp32"][2], info=info, precision="fp32")
    with torch.no_grad():
        reference = torch.cat([model(x) for x, _ in batches]).double()
    for way in ways:
        path = Path(f"v2-{way}.tflite")
        started = time.perf_counter()
        if way.startswith("aeq-"):  # e.g. aeq-min_max_uniform_quantize
            aeq_quantized(model, info, calibration, path, way)
        else:
            options = _quantizer_for(way)
            try:
                get_runtime("litert").export(model, path, info=info, precision="int8", calibration=calibration,
                                             **options)  # fmt: skip
            except ExportError as exc:  # the export's own check refused the file
                print(f"{way}: {exc}" + (f" ({NOTES.pop()})" if NOTES else ""), flush=True)
                continue
        seconds = time.perf_counter() - started
        network = load_exported(path)
        logits = torch.cat([torch.as_tensor(network(x)) for x, _ in batches]).double()
        kl = torch.nn.functional.kl_div(logits.log_softmax(1), reference.log_softmax(1), log_target=True,
                                        reduction="batchmean")  # fmt: skip
        agrees = (logits.argmax(1) == reference.argmax(1)).float().mean()
        notes = f" ({NOTES.pop()})" if NOTES else ""
        print(f"{way}: top-1 {100 * (logits.argmax(1) == labels).float().mean().item():.1f}%, KL to fp32 "
              f"{kl.item():.4f}, agrees {100 * agrees.item():.1f}%, made in {seconds:.0f} s{notes}", flush=True)  # fmt: skip
        files[way] = ("litert", "int8", path)
    # Each file timed in a process of its own, in turns (as export --format auto times them), 2 threads
    times = time_in_processes(files, shape=(1, 3, 224, 224), threads=2, rounds=3, runs=50)
    shown = {way: t if isinstance(t, str) else f"{best_round_median(t, 50):.2f}" for way, t in times.items()}
    print("ms (best round's median):", ", ".join(f"{way} {t}" for way, t in shown.items()))


if __name__ == "__main__":
    main()
