"""One LiteRT int8 file, three kernel sets: why the same ``.tflite`` scores differently from host to host.

LiteRT runs a file with XNNPACK by default; it also has its builtin optimized kernels (ruy) and its
reference kernels, which define what the int8 operators compute.  This scores the file on
imagenet-sample under each, then walks the graph op by op (builtin optimized against reference, every
tensor kept) to show where the two first part and how far the difference grows.

    mobilenets export --format litert --int8 --model mobilenet_v2 --weights $W \\
        --calibration ../shared/data/coco128/images --out v2i8.tflite
    python benchmarks/litert_kernels.py v2i8.tflite 8       # file, images for the op-by-op walk

Measured (AMD EPYC family 25 model 17, Zen 4: AVX-512, VNNI, BF16; session 18, docs/benchmarks.md), the CLI's
default int8 file (200 coco128 photos), 2 min 50 s: XNNPACK 82.37 %, builtin optimized 82.25 %, reference 83.05 %
top-1 (fp32 83.8).  The first difference is one step (1 LSB) in 0.75 % of block 1's projection outputs, every one
of them upward (12,107 above reference's, none below) - as if results half-way between two steps were rounded up
by the optimized kernels and away from zero by the reference (read from the direction, not from the kernels'
source).  The depthwise convolutions after it turn one step
into up to 7-15, in both directions; by block 3 over
half of every tensor differs, and 87 % of the logits.  The same command's file scored 83.1 % under XNNPACK on an
AVX2 host (Zen 3, session 10): the int8 network amplifies whichever rounding the host's kernels make, so its
accuracy on 1,000 images moves by up to a point with them.
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from mobilenets.classification.evaluate import evaluate
from mobilenets.data import eval_dataset, make_loader
from mobilenets.errors import ConfigError
from mobilenets.runtimes.bench import cpu_description
from mobilenets.runtimes.litert import LiteRtNetwork
from mobilenets.validate import NON_NEGATIVE_INT

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KERNELS = {"xnnpack": "AUTO", "builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "reference": "BUILTIN_REF"}


def network(path: Path, kernels: str, keep_tensors: bool = False) -> LiteRtNetwork:
    """The file as ``mobilenets eval`` runs it (LiteRtNetwork: its input quantized, its int8 output read
    through the recorded scale), its interpreter built with the other kernels."""
    from ai_edge_litert import interpreter as litert

    found = LiteRtNetwork(path)
    resolver = getattr(litert.OpResolverType, KERNELS[kernels])
    found.interpreter = litert.Interpreter(model_path=str(path), num_threads=2, experimental_op_resolver_type=resolver,
                                           experimental_preserve_all_tensors=keep_tensors)  # fmt: skip
    found.interpreter.allocate_tensors()  # the same file, so the same tensor indices LiteRtNetwork read
    return found


def scores(path: Path, kernels: str, batches) -> str:
    """Top-1 as ``mobilenets eval`` counts it (a tie for the best class shared among the tied classes:
    int8 logits take 256 values), and how many images had such a tie, in the same pass."""
    runner, ties = network(path, kernels), []

    def counting(images: torch.Tensor) -> torch.Tensor:
        logits = runner(images)
        ties.append(int(((logits == logits.max(1, keepdim=True).values).sum(1) > 1).sum()))
        return logits

    top1 = 100 * evaluate(counting, batches, runner.outputs[0]["shape"][-1])["top1"]
    return f"top-1 {top1:.2f} %  ({sum(ties)} of {sum(len(y) for _, y in batches)} images tie for the best class)"


def every_tensor(path: Path, kernels: str, images: torch.Tensor) -> tuple[dict[int, np.ndarray], list[dict]]:
    """Each op output's raw (int8) values on every image, by tensor index; and the ops in run order."""
    runner = network(path, kernels, keep_tensors=True)
    found: dict[int, list[np.ndarray]] = {}
    for image in images:
        runner.run_one(image[None].numpy())
        for detail in runner.interpreter.get_tensor_details():
            try:
                value = runner.interpreter.get_tensor(detail["index"])
            except ValueError:  # a tensor the interpreter did not keep
                continue
            found.setdefault(detail["index"], []).append(value.astype(np.float64))
    # _get_ops_details: the interpreter's only listing of its ops (LiteRT's, not ours)
    return {index: np.stack(values) for index, values in found.items()}, runner.interpreter._get_ops_details()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="a .tflite written by mobilenets export --format litert")
    parser.add_argument("walked", type=NON_NEGATIVE_INT.argtype, help="images for the op-by-op walk (0: none)")
    args = parser.parse_args()
    path, walked = args.file, args.walked
    try:  # a missing file, a missing or foreign sidecar: one line, exit 2
        resolution = int(network(path, "xnnpack").info["resolution"])
    except ConfigError as error:
        parser.error(str(error))
    dataset, _ = eval_dataset(DATA / "imagenet-sample", style="imagenet", resolution=resolution)
    batches = list(make_loader(dataset, 50, workers=2))
    print(cpu_description(), path.name)
    for kernels in KERNELS:
        print(f"{kernels:9s}  {scores(path, kernels, batches)}")
    images = torch.cat([x for x, _ in batches])[:walked]
    (builtin, ops), (reference, _) = every_tensor(path, "builtin", images), every_tensor(path, "reference", images)
    print(f"builtin against reference, op by op on {walked} images: share of outputs that differ, largest "
          "difference, outputs above / below reference's")  # fmt: skip
    for op in ops:
        for index in op["outputs"]:
            if index in builtin and index in reference and builtin[index].shape == reference[index].shape:
                signed = builtin[index] - reference[index]
                print(f"{op['index']:3d} {op['op_name'][:18]:18s} {100 * np.mean(signed != 0):6.2f} %  "
                      f"{np.abs(signed).max():5.1f}  {int((signed > 0).sum())} / {int((signed < 0).sum())}")  # fmt: skip


if __name__ == "__main__":
    main()
