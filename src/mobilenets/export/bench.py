"""Inference latency of registry models on every CPU path, beside torchvision's as references.

Backends:

* ``eager`` - the model as built, NCHW, ``torch.inference_mode``;
* ``channels_last`` - batch norm folded into the convs, NHWC memory format;
* ``compile`` - the ``channels_last`` model through ``torch.compile`` (needs a C++ compiler);
* ``onnxruntime`` - ``mobilenets export`` (BN folded) run by ONNX Runtime;
* ``onnxruntime-int8`` - the same, quantized to int8 (QDQ, per-channel weights, uint8 activations);
* ``executorch-xnnpack`` - ``mobilenets export --format executorch``: the ``.pte`` a phone
  runs, here through ExecuTorch's Python runtime and XNNPACK's x86 kernels (batch 1 per call:
  a batch runs image by image); ``executorch-xnnpack-int8`` - the same, PT2E int8.  Each
  export lowers for about a minute, so neither is a default.

torchvision's model of the same name (when it has one) runs ``eager`` and
``onnxruntime`` (its plain ``torch.onnx.export``) in the same process, so every
figure can be read as a ratio measured side by side: at each thread count every
configuration is timed ``runs`` times in three rounds that take turns.  The median,
90th percentile and throughput are reported, with the compute floor: mult-adds over
this CPU's measured multiply-add rate at that thread count.

Memory is measured apart from the timing, in a fresh process per configuration that
loads only that model (an ONNX Runtime one imports only onnxruntime and numpy, as a
deployment would): its peak resident memory over ``warmup + 1`` runs, and how much of
that the runs added to the loaded model (activations, workspaces, thread buffers).
A process that has held other models keeps their allocator pools, so in-process
figures would mostly measure the benchmark.  ``compile`` is not measured (its child
would recompile for a minute).  Given trained weights and labelled images, each
backend's top-1 is measured as well.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._table import format_table, human
from ..cost import profile
from ..cost.latency import alternating_ms
from ..errors import ConfigError
from ..models import create_model, load_model_with_info
from ..predict import check_classes, default_data_info
from ..validate import BENCH_BACKENDS as BACKENDS
from ..weights import WeightsError, load_weights, read_weights_file
from .detection import DecodedDetector, is_detector
from .onnx import SegmentationScores, export_onnx, fold_batchnorm
from .ort import ort_session
from .quantize import quantize_onnx

__all__ = [
    "BACKENDS",
    "BenchResult",
    "PreparedModel",
    "cpu_name",
    "int8_pays",
    "peak_multiply_add_rate",
    "results_table",
    "run_bench",
    "time_call",
]

REFERENCE_BACKENDS = ("eager", "onnxruntime")
ROUNDS = 3
# torchvision's builders for the registry models it also ships
TORCHVISION_NAMES = {
    "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3_large": "mobilenet_v3_large",
    "mobilenet_v3_small": "mobilenet_v3_small",
    "resnet18": "resnet18",
    "ssdlite320_mobilenet_v3_large": "ssdlite320_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large": "lraspp_mobilenet_v3_large",
    "deeplabv3_mobilenet_v3_large": "deeplabv3_mobilenet_v3_large",
}
# Detectors are timed as what is exported: the network and its box decoding on an image
# already at the input size (mobilenets.export.detection.DecodedDetector), ours and
# torchvision's alike; NMS, which depends on the scores, is left out of every path.
DETECTOR_BACKENDS = ("eager", "channels_last", "onnxruntime")
# Segmenters are timed as exported: image in, class scores at the input's size out (the
# final upsampling included; mobilenets.export.onnx.SegmentationScores), ours and torchvision's.
SEGMENTER_BACKENDS = ("eager", "channels_last", "compile", "onnxruntime")


def _task(name: str) -> str:
    from ..models import get_model_entry

    return get_model_entry(name).task


def _reference_model(name: str) -> nn.Module:
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models.detection) + torchvision.models.list_models(
        module=torchvision.models.segmentation
    ):
        # untrained, and without fetching ImageNet backbone weights (as torchvision's COCO weights are built)
        return torchvision.models.get_model(TORCHVISION_NAMES[name], weights=None, weights_backbone=None)
    return torchvision.models.get_model(TORCHVISION_NAMES[name])


@dataclass
class BenchResult:
    model: str
    source: str  # "mobilenets" or "torchvision"
    backend: str
    batch_size: int
    threads: int
    resolution: int
    mult_adds: int  # per image
    median_ms: float | None = None
    p90_ms: float | None = None
    images_per_s: float | None = None
    peak_rss_mb: float | None = None  # a process running only this configuration
    run_mb: float | None = None  # of which the runs added beyond the loaded model
    floor_ms: float | None = None
    top1: float | None = None  # % on the evaluation images, when weights and images were given
    error: str = ""

    @property
    def label(self) -> str:
        return f"{self.model}" if self.source == "mobilenets" else f"torchvision {self.model}"


def peak_multiply_add_rate(threads: int, size: int = 1024, repeats: int = 5) -> float:
    """Multiply-adds per second of a large fp32 matrix product at ``threads`` threads:
    a practical peak for this CPU (the compute floor's denominator)."""
    with _threads(threads):
        a, b = torch.randn(size, size), torch.randn(size, size)
        torch.mm(a, b)
        best = min(time_call(lambda: torch.mm(a, b)) for _ in range(repeats))
    return size**3 / best


def time_call(call: Callable[[], Any]) -> float:
    """Seconds one call takes."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


@contextlib.contextmanager
def _threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# Run in a fresh interpreter by `isolated_memory`: load one model, note the resident
# memory, start a new high-water mark (Linux: /proc/self/clear_refs), run it, report.
_MEMORY_CHILD = """
import json, sys
from pathlib import Path
kind, path, batch, size, threads, runs = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

if kind == "onnxruntime":
    import numpy as np
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    run = lambda: session.run(None, {"image": x})
else:
    import torch
    torch.set_num_threads(threads)
    model = torch.load(path, weights_only=False).eval()
    x = torch.randn(batch, 3, size, size)
    if kind == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    def run():
        with torch.inference_mode():
            model(x)
loaded = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")
for _ in range(runs):
    run()
print(json.dumps({"loaded_mb": loaded, "peak_mb": status("VmHWM")}))
"""


def isolated_memory(kind: str, path: Path, batch: int, size: int, threads: int, runs: int) -> tuple[float, float]:
    """(peak resident MB, MB the runs added to the loaded model) of a fresh process that
    loads ``path`` - an ONNX file (``kind`` "onnxruntime") or a pickled module ("eager",
    "channels_last") - and runs it ``runs`` times on a batch of ``batch`` images."""
    if not Path("/proc/self/clear_refs").exists():
        raise ConfigError("per-process memory is measured through /proc (Linux only)")
    package_root = str(Path(__file__).resolve().parents[2])  # unpickling needs mobilenets importable
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    argv = [sys.executable, "-c", _MEMORY_CHILD, kind, str(path), str(batch), str(size), str(threads), str(runs)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report["peak_mb"], report["peak_mb"] - report["loaded_mb"]


def _torch_runner(model: nn.Module, channels_last: bool) -> Callable[[Tensor], Any]:
    def run(x: Tensor):
        with torch.inference_mode():
            return model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)

    return run


def _pte_runner(path: Path, threads: int) -> Callable[[Tensor], Any]:
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count

    from .executorch import PteModel

    program = PteModel(path)
    # ExecuTorch's Python runtime sizes its XNNPACK thread pool once per process (one
    # thread per core); resizing it between runs deadlocked here, so other counts are
    # reported as not measured rather than mislabelled.
    pool = _threadpool_get_thread_count()
    if threads and threads != pool:
        raise ConfigError(f"ExecuTorch's thread pool has {pool} threads in this process; run --threads {pool}")
    return program


def _ort_runner(path: Path, threads: int) -> Callable[[Tensor], Any]:
    session = ort_session(path, threads)

    def run(x: Tensor):
        return session.run(None, {"image": x.numpy()})

    return run


class PreparedModel:
    """Per model, the artefacts every backend needs, built once (exports, quantization)."""

    def __init__(
        self,
        model: nn.Module,
        info: dict[str, Any],
        workdir: Path,
        calibration: Tensor | None,
        tag: str,
        *,
        reference: bool = False,
    ):
        self.model, self.info, self.workdir, self.calibration, self.tag = model, info, workdir, calibration, tag
        self.reference = reference  # torchvision's model: exported the plain way, not through export_onnx
        self._cache: dict[str, Any] = {}
        self._top1: dict[str, float] = {}

    def top1(self, backend: str, batches: list, num_classes: int) -> float:
        """Top-1 (%) of this backend's model on ``batches``; the PyTorch backends share one
        evaluation (they compute the same function), the ONNX Runtime ones run their files."""
        from ..train import evaluate

        kind = backend if backend.startswith(("onnxruntime", "executorch")) else "pytorch"
        if kind not in self._top1:
            if kind == "pytorch":
                runner = self.model.eval()
            elif kind.startswith("executorch"):
                runner = self.runner(backend, threads=0)
            else:
                run = self.runner(backend, threads=0)
                runner = lambda x: torch.from_numpy(run(x)[0])  # noqa: E731
            self._top1[kind] = 100 * evaluate(runner, batches, num_classes)["top1"]
        return self._top1[kind]

    def folded(self) -> nn.Module:
        if "folded" not in self._cache:
            folded, _ = fold_batchnorm(self.model)
            self._cache["folded"] = folded.to(memory_format=torch.channels_last)
        return self._cache["folded"]

    def onnx(self) -> Path:
        if "onnx" not in self._cache:
            path = self.workdir / f"{self.tag}.onnx"
            export_onnx(self.model, path, info=self.info, dynamic_batch=True)
            self._cache["onnx"] = path
        return self._cache["onnx"]

    def torchvision_onnx(self) -> Path:
        """torchvision's model exported the plain way a user would (no folding of ours)."""
        if "tv_onnx" not in self._cache:
            path = self.workdir / f"{self.tag}.onnx"
            x = torch.randn(1, 3, self.info["resolution"], self.info["resolution"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    self.model.eval(), (x,), str(path), input_names=["image"], output_names=["logits"],
                    opset_version=17, dynamic_axes={"image": {0: "batch"}}, dynamo=False,
                )  # fmt: skip
            self._cache["tv_onnx"] = path
        return self._cache["tv_onnx"]

    def int8(self) -> Path:
        if "int8" not in self._cache:
            real = self.calibration is not None
            calibration = self.calibration_images()
            path = self.workdir / f"{self.tag}-int8.onnx"
            # The range search costs minutes and only matters for accuracy, so only with real images.
            quantize_onnx(self.onnx(), path, calibration, model=self.model, range_search=real, progress=real)
            self._cache["int8"] = path
        return self._cache["int8"]

    def calibration_images(self) -> Tensor:
        """The images int8 ranges come from: the given ones, else seeded noise - latency
        does not depend on the ranges; accuracy does (pass --calibration for that)."""
        if self.calibration is not None:
            return self.calibration
        size = self.info["resolution"]
        return torch.randn(16, 3, size, size, generator=torch.Generator().manual_seed(0))

    def pte(self, int8: bool) -> Path:
        """This model as an XNNPACK ``.pte`` (int8: calibrated as ``int8`` is, ranges only)."""
        key = "pte-int8" if int8 else "pte"
        if key not in self._cache:
            from .executorch import export_executorch

            calibration = self.calibration_images() if int8 else None
            path = self.workdir / f"{self.tag}-{key}.pte"
            export_executorch(self.model, path, info=self.info, int8=int8, calibration=calibration)
            self._cache[key] = path
        return self._cache[key]

    def pickled(self, backend: str) -> Path:
        """The module ``backend`` runs, saved whole for a memory probe to load."""
        key = f"pickled-{backend}"
        if key not in self._cache:
            path = self.workdir / f"{self.tag}-{backend}.pt"
            torch.save(self.folded() if backend == "channels_last" else self.model.eval(), path)
            self._cache[key] = path
        return self._cache[key]

    def memory(self, backend: str, batch: int, size: int, threads: int, runs: int) -> tuple[float, float] | None:
        """``isolated_memory`` of this backend's model; None where it is not measured (compile)."""
        if backend == "compile" or backend.startswith("executorch"):  # compile: recompiles; executorch: not yet
            return None
        if backend.startswith("onnxruntime"):
            path, kind = self.runner_file(backend), "onnxruntime"
        else:
            path, kind = self.pickled(backend), backend
        return isolated_memory(kind, path, batch, size, threads, runs)

    def runner_file(self, backend: str) -> Path:
        if backend == "onnxruntime":
            return self.torchvision_onnx() if self.reference else self.onnx()
        return self.int8()

    def runner(self, backend: str, threads: int) -> Callable[[Tensor], Any]:
        if backend == "eager":
            return _torch_runner(self.model.eval(), channels_last=False)
        if backend == "channels_last":
            return _torch_runner(self.folded(), channels_last=True)
        if backend == "compile":
            if "compiled" not in self._cache:
                self._cache["compiled"] = torch.compile(self.folded())
            return _torch_runner(self._cache["compiled"], channels_last=True)
        if backend in ("onnxruntime", "onnxruntime-int8"):
            return _ort_runner(self.runner_file(backend), threads)
        if backend in ("executorch-xnnpack", "executorch-xnnpack-int8"):
            return _pte_runner(self.pte(int8=backend.endswith("int8")), threads)
        raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:120]


def _time_side_by_side(entries, name, threads, batch_sizes, size, mult_adds, runs, warmup, memory) -> list[BenchResult]:
    """Time every backend of ours and the reference's at one thread count, in ``ROUNDS``
    rounds that visit each in turn, so that drift of a noisy machine (clock, neighbours)
    reaches all alike; each round's runs are back to back, as a deployed model would run.
    With ``memory``, each configuration's memory is then measured in a process of its own."""
    timed: list[tuple[BenchResult, Callable[[Tensor], Any], Tensor]] = []
    results = []
    for source, prepared, chosen in entries:
        for backend in chosen:
            try:
                run, error = prepared.runner(backend, threads), ""
            except Exception as exc:  # one broken path must not hide the others
                run, error = None, _error(exc)
            for batch in batch_sizes:
                result = BenchResult(name, source, backend, batch, threads, size, mult_adds, error=error)
                results.append(result)
                if run is None:
                    continue
                x = torch.randn(batch, 3, size, size)
                try:
                    for _ in range(warmup):
                        run(x)
                    timed.append((result, run, x))
                except Exception as exc:
                    result.error = _error(exc)
    calls = {id(result): (lambda run=run, x=x: run(x)) for result, run, x in timed}
    times = alternating_ms(calls, rounds=ROUNDS, runs=max(1, -(-runs // ROUNDS)), pause=0.05)
    for result, _, _ in timed:
        samples = times[id(result)]
        result.median_ms, result.p90_ms = statistics.median(samples), float(np.percentile(samples, 90))
    if memory:
        preparations = {(source, backend): prepared for source, prepared, chosen in entries for backend in chosen}
        for result, _, _ in timed:
            prepared = preparations[result.source, result.backend]
            try:
                measured = prepared.memory(result.backend, result.batch_size, size, threads, warmup + 1)
            except Exception as exc:  # noqa: BLE001 - the timings stand without it
                warnings.warn(f"{result.label} {result.backend}: no memory figure ({_error(exc)})", stacklevel=2)
                continue
            if measured:
                result.peak_rss_mb, result.run_mb = measured
    return results


def run_bench(
    models: Sequence[str],
    *,
    backends: Sequence[str] = ("eager", "channels_last", "onnxruntime", "onnxruntime-int8"),
    batch_sizes: Sequence[int] = (1,),
    threads: Sequence[int] = (torch.get_num_threads(),),
    resolution: int | None = None,
    runs: int = 30,
    warmup: int = 5,
    references: bool = True,
    calibration: Tensor | None = None,
    weights: Mapping[str, str | Path] | None = None,
    eval_data: str | Path | None = None,
    val_subset: int | None = None,
    memory: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """Time every (model, backend, batch size, thread count); see the module docstring.

    ``weights`` maps model names to weight files (ours or torchvision's; torchvision's
    reference model gets them too when they are in its layout).  With ``eval_data``
    (labelled images), every backend of a model with weights also gets its top-1 there:
    int8 is measured, not assumed.  ``memory=False`` skips the per-configuration memory
    processes (a few seconds each).
    """
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ConfigError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    if not models:
        raise ConfigError("name at least one model")
    rates = {t: peak_multiply_add_rate(t) for t in threads}
    results: list[BenchResult] = []
    with tempfile.TemporaryDirectory(prefix="mobilenets-bench-") as tmp:
        workdir = Path(tmp)
        for name in models:
            weight_file = (weights or {}).get(name)
            model, info = _bench_model(name, weight_file, resolution)
            size = info["resolution"]
            detector, segmenter = is_detector(model), _task(name) == "segmentation"
            model_backends = [b for b in backends if b in DETECTOR_BACKENDS] if detector else backends
            if segmenter:
                model_backends = [b for b in backends if b in SEGMENTER_BACKENDS]
            if detector:
                model = DecodedDetector(model, size).eval()
            if segmenter:
                model = SegmentationScores(model).eval()
            mult_adds = profile(model, (3, size, size)).mult_adds
            entries = [("mobilenets", PreparedModel(model, info, workdir, calibration, name), model_backends)]
            if references and name in TORCHVISION_NAMES:
                reference = _reference_model(name).eval()
                reference.has_weights = False
                if weight_file:
                    with contextlib.suppress(WeightsError):  # our layout: the reference stays untrained
                        load_weights(reference, weight_file)
                        reference.has_weights = True
                if detector:
                    reference = DecodedDetector(reference, size).eval()
                if segmenter:
                    reference = SegmentationScores(reference).eval()
                ref_backends = [b for b in REFERENCE_BACKENDS if b in backends]
                entries.append(
                    (
                        "torchvision",
                        PreparedModel(reference, info, workdir, None, f"tv-{name}", reference=True),
                        ref_backends,
                    )
                )
            for count in threads:
                with _threads(count):
                    done = _time_side_by_side(entries, name, count, batch_sizes, size, mult_adds, runs, warmup, memory)
                for result in done:
                    if result.median_ms:
                        result.images_per_s = 1000 * result.batch_size / result.median_ms
                        result.floor_ms = 1000 * mult_adds * result.batch_size / rates[count]
                    results.append(result)
                    if progress:
                        progress(_line(result))
            if eval_data and weight_file:
                _score(results, entries, name, info, eval_data, val_subset, progress)
    return results


def _bench_model(name: str, weight_file: str | Path | None, resolution: int | None) -> tuple[nn.Module, dict]:
    """``name`` untrained, or as ``weight_file`` records it: a run's checkpoint or a saved file
    brings its own class count, width and class names (a fine-tuned 3-class MobileNetV2 is
    benchmarked as such); a plain state dict (torchvision's) loads into the registry's model."""
    options = {"resolution": resolution} if resolution else {}
    if weight_file:
        _, arch, _ = read_weights_file(weight_file)
        if "name" in arch:
            if arch["name"] != name:
                raise ConfigError(f"--weights {name}={weight_file}: the file holds a {arch['name']}, not a {name}")
            model, info = load_model_with_info(weight_file, **options)
            return model.eval(), default_data_info(model, info)
    model = create_model(name, **options).eval()
    if weight_file:
        load_weights(model, weight_file)
    return model, default_data_info(model)


def _score(results, entries, name, info, eval_data, val_subset, progress) -> None:
    """Fill in top-1 for every result of ``name`` whose model has trained weights."""
    from ..data import eval_dataset, make_loader

    dataset, classes = eval_dataset(
        eval_data, style=info["transforms"], resolution=info["resolution"], subset=val_subset
    )
    check_classes(info, classes, model=name, data=str(eval_data))
    batches = list(make_loader(dataset, 50, workers=0))
    for source, prepared, chosen in entries:
        if source == "torchvision" and not getattr(prepared.model, "has_weights", False):
            continue
        for backend in chosen:
            try:
                top1 = prepared.top1(backend, batches, len(classes))
            except Exception as exc:  # noqa: BLE001 - an unscorable path keeps its timings
                if progress:
                    progress(f"{name} {source} {backend}: no accuracy ({_error(exc)})")
                continue
            for r in results:
                if (r.model, r.source, r.backend) == (name, source, backend):
                    r.top1 = top1
            if progress:
                progress(f"{name} {source} {backend}: top-1 {top1:.1f}% on {len(dataset)} images")


def _line(r: BenchResult) -> str:
    timing = r.error or f"{r.median_ms:.2f} ms median"
    return f"{r.label} {r.backend} batch {r.batch_size} threads {r.threads}: {timing}"


def results_table(results: Sequence[BenchResult]) -> str:
    """One row per configuration; 'vs tv ORT' is the ratio to torchvision's ONNX Runtime
    export at the same batch size and threads (< 1: we are faster)."""
    reference = {
        (r.model, r.batch_size, r.threads): r.median_ms
        for r in results
        if r.source == "torchvision" and r.backend == "onnxruntime" and r.median_ms
    }
    rows = []
    scored = any(r.top1 is not None for r in results)
    for r in results:
        if r.error:
            rows.append([r.label, r.backend, r.batch_size, r.threads, *"-------", r.error[:50]])
            continue
        ref = reference.get((r.model, r.batch_size, r.threads))
        rows.append(
            [
                r.label,
                r.backend,
                r.batch_size,
                r.threads,
                f"{r.median_ms:.2f}",
                f"{r.p90_ms:.2f}",
                f"{r.images_per_s:.1f}",
                "-" if r.peak_rss_mb is None else f"{r.peak_rss_mb:.0f}",
                "-" if r.run_mb is None else f"{r.run_mb:.0f}",
                f"{r.median_ms / r.floor_ms:.1f}x",
                f"{r.median_ms / ref:.2f}" if ref else "",
                "",
            ]
        )
    header = ["model", "backend", "batch", "threads", "median ms", "p90 ms", "img/s", "peak RSS MB", "run MB"]
    header += ["vs floor", "vs tv ORT", "error"]
    if scored:
        header.insert(-1, "top-1 %")
        for row, r in zip(rows, results):
            row.insert(-1, "-" if r.top1 is None or r.error else f"{r.top1:.1f}")
    mult_adds = {r.label: r.mult_adds for r in results}
    notes = ", ".join(f"{k} {human(v)}" for k, v in mult_adds.items())
    return (
        format_table(header, rows) + f"\nmult-adds per image: {notes}\n"
        "peak RSS: a process running only that configuration; run MB: what its runs added to the loaded model"
    )


def results_json(results: Sequence[BenchResult], machine: dict[str, Any]) -> dict[str, Any]:
    return {"machine": machine, "results": [asdict(r) for r in results]}


def cpu_name() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return cpu


def int8_pays(fp32: Path, int8: Path, size: int, runs: int = 30) -> tuple[float, float]:
    """Median batch-1 latency (ms) of an fp32 ONNX model and its int8 version in ONNX
    Runtime on this host, timed in alternating rounds as ``bench`` does: whether int8 is
    faster depends on the CPU (integer dot-product instructions: VNNI on x86, dot-product
    on Arm), so it is measured where the export runs, not assumed."""
    x = torch.rand(1, 3, size, size)
    calls = {path: (lambda run=_ort_runner(path, 0): run(x)) for path in (fp32, int8)}
    for call in calls.values():
        call()  # first-call allocations
    times = alternating_ms(calls, rounds=ROUNDS, runs=-(-runs // ROUNDS), pause=0.05)
    return statistics.median(times[fp32]), statistics.median(times[int8])


def machine_description(threads: Sequence[int]) -> dict[str, Any]:
    import onnxruntime

    return {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "peak_gmac_per_s": {str(t): round(peak_multiply_add_rate(t) / 1e9, 1) for t in threads},
    }


def plot_latency(results: Sequence[BenchResult], out: str | Path) -> Path:
    """Latency (batch 1, most threads) against mult-adds: one marker per backend, one colour per model."""
    from ..plots import pyplot, save_figure

    plt = pyplot()
    ok = [r for r in results if r.median_ms and r.batch_size == min(x.batch_size for x in results)]
    if not ok:
        raise ConfigError("no successful measurements to plot")
    most = max(r.threads for r in ok)
    ok = [r for r in ok if r.threads == most]
    scored = [r for r in ok if r.top1 is not None]
    fig, axes = plt.subplots(1, 2 if scored else 1, figsize=(12 if scored else 7, 4.8), squeeze=False)
    ax = axes[0][0]
    markers = dict(zip(BACKENDS, "osD^v"))
    colours = {label: f"C{i}" for i, label in enumerate(dict.fromkeys(r.label for r in ok))}
    for panel, rows, x in ((ax, ok, lambda r: r.mult_adds / 1e6), (axes[0][-1], scored, lambda r: r.top1)):
        for r in rows:
            panel.scatter(
                x(r),
                r.median_ms,
                marker=markers.get(r.backend, "x"),
                color=colours[r.label],
                facecolors="none" if r.source == "torchvision" else colours[r.label],
            )
    if scored:
        side = axes[0][1]
        side.set(xlabel="top-1 on the evaluation images (%)", ylabel="median latency (ms)", yscale="log")
        side.set_title("latency against accuracy (lower right is better)")
        side.grid(True, alpha=0.3)
    for label, colour in colours.items():
        ax.scatter([], [], color=colour, label=label)
    for backend, marker in markers.items():
        if any(r.backend == backend for r in ok):
            ax.scatter([], [], marker=marker, color="gray", label=backend)
    ax.set(
        xlabel="mult-adds per image (M)",
        ylabel="median latency (ms)",
        title=f"batch {ok[0].batch_size}, {most} thread(s); hollow = torchvision",
    )
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    path = save_figure(fig, out)
    plt.close(fig)
    return path
