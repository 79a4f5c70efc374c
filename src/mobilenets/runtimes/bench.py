"""Inference latency of registry models on every CPU path, beside torchvision's as references.

Backends are the runtime registry's bench paths (:func:`mobilenets.runtimes.bench_paths`):
``eager``, ``channels_last`` (BN folded, NHWC) and ``compile`` run PyTorch itself;
``onnxruntime[-int8]`` our ONNX export (int8: calibrated QDQ); ``openvino[-bf16|-int8]`` our
OpenVINO IR at each precision; ``executorch-xnnpack[-int8]`` the ``.pte`` a phone runs, here
through ExecuTorch's Python runtime and XNNPACK's x86 kernels (batch 1 per call; each export
lowers for about a minute, so neither is a default).

torchvision's model of the same name (when it has one) runs ``eager`` and
``onnxruntime`` (its plain ``torch.onnx.export``) in the same run, so every
figure can be read as a ratio measured side by side: at each thread count every
configuration is timed ``runs`` times in three rounds that take turns.  PyTorch's paths
run in the bench's process; each exported file runs in a timing process of its own
(:mod:`mobilenets.runtimes.timing`), as ``export --format auto`` times them: beside ONNX
Runtime and OpenVINO in one process, a LiteRT interpreter's turns sometimes took twice their time.  The median,
90th percentile and throughput are reported, with the compute floor: mult-adds over
this CPU's measured multiply-add rate at that thread count.

Memory is measured apart from the timing, in a fresh process per configuration that
loads only that model (:mod:`mobilenets.runtimes.probe`: an ONNX Runtime one imports only
onnxruntime and numpy, as a deployment would): its peak resident memory over ``warmup + 1``
runs, and how much of that the runs added to the loaded model (activations, workspaces,
thread buffers).  ``compile`` and ExecuTorch are not measured.  Given trained weights and labelled images, each
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
from ..export.onnx import deployable, export_onnx, fold_batchnorm
from ..export.ort import ort_session
from ..export.quantize import QuantizeOptions, quantize_onnx
from ..models import create_model, load_model_with_info
from ..predict import check_classes, default_data_info
from ..tasks import get_task
from ..weights import WeightsError, load_weights, read_weights_file
from . import Runtime, bench_path, bench_paths, error_line, list_runtimes
from .probe import child_environment
from .timing import TimingProcesses

__all__ = [
    "BenchResult",
    "PreparedModel",
    "cpu_name",
    "error_line",
    "int8_pays",
    "peak_multiply_add_rate",
    "results_table",
    "run_bench",
    "time_call",
]

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
# Every path times what an export holds (``Task.deployable``): a detector's network and box
# decoding on an image already at the input size (NMS, which depends on the scores, is left
# out of every path), a segmenter's class scores at the input's size, ours and torchvision's
# alike.  Which paths serve which task is the runtime's to say (``Runtime.serves``).


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


def isolated_memory(backend: str, path: Path, batch: int, size: int, threads: int, runs: int) -> tuple[float, float]:
    """(peak resident MB, MB the runs added to the loaded model) of a fresh process that loads
    ``path`` as the bench path ``backend`` runs it (:mod:`mobilenets.runtimes.probe`) and runs
    it ``runs`` times on a batch of ``batch`` images."""
    runtime, precision = bench_path(backend)
    if not Path("/proc/self/clear_refs").exists():
        raise ConfigError("per-process memory is measured through /proc (Linux only)")
    env = child_environment(threads)
    argv = [sys.executable, "-m", "mobilenets.runtimes.probe", runtime.name, precision, str(path)]
    argv += [str(batch), str(size), str(threads), str(runs)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report["peak_mb"], report["peak_mb"] - report["loaded_mb"]


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
        quantize: QuantizeOptions | None = None,
    ):
        self.model, self.info, self.workdir, self.calibration, self.tag = model, info, workdir, calibration, tag
        # how the int8 model is made (QuantizeOptions, as the user asked); None: the defaults, with the
        # range search only on real calibration images (it costs minutes and only matters for accuracy)
        self.quantize = quantize
        # what the PyTorch paths run and torchvision's plain export holds: what an export of ours holds
        self.graph = deployable(model, info)[0].eval()
        self.reference = reference  # torchvision's model: exported the plain way, not through export_onnx
        self._cache: dict[str, Any] = {}
        self._top1: dict[str, float] = {}

    def top1(self, backend: str, batches: list, num_classes: int) -> float:
        """Top-1 (%) of this backend's model on ``batches``; the PyTorch paths share one
        evaluation (they compute the same function), every other runs its file."""
        from ..classification.evaluate import evaluate

        runtime, precision = bench_path(backend)
        kind = "pytorch" if not runtime.suffix else backend
        if kind not in self._top1:
            run = self.graph if kind == "pytorch" else runtime.bench_runner(self, precision, threads=0)
            self._top1[kind] = 100 * evaluate(run, batches, num_classes)["top1"]
        return self._top1[kind]

    def folded(self) -> nn.Module:
        if "folded" not in self._cache:
            folded, _ = fold_batchnorm(self.graph)
            self._cache["folded"] = folded.to(memory_format=torch.channels_last)
        return self._cache["folded"]

    def compiled(self) -> nn.Module:
        if "compiled" not in self._cache:
            self._cache["compiled"] = torch.compile(self.folded())
        return self._cache["compiled"]

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
                    self.graph, (x,), str(path), input_names=["image"], output_names=["logits"],
                    opset_version=17, dynamic_axes={"image": {0: "batch"}}, dynamo=False,
                )  # fmt: skip
            self._cache["tv_onnx"] = path
        return self._cache["tv_onnx"]

    def int8(self) -> Path:
        """The int8 QDQ ONNX model, which the ONNX Runtime and OpenVINO int8 paths both run."""
        if "int8" not in self._cache:
            real = self.calibration is not None
            calibration = self.calibration_images()
            path = self.workdir / f"{self.tag}-int8.onnx"
            options = self.quantize or QuantizeOptions(range_search=real)
            quantize_onnx(self.onnx(), path, calibration, model=self.model, options=options, progress=real)
            self._cache["int8"] = path
        return self._cache["int8"]

    def calibration_images(self) -> Tensor:
        """The images int8 ranges come from: the given ones, else seeded noise - latency
        does not depend on the ranges; accuracy does (pass --calibration for that)."""
        if self.calibration is not None:
            return self.calibration
        size = self.info["resolution"]
        return torch.randn(16, 3, size, size, generator=torch.Generator().manual_seed(0))

    def exported(self, runtime: Runtime, precision: str, **options: Any) -> Path:
        """This model in ``runtime``'s file at ``precision``, exported once (int8: calibrated
        on :meth:`calibration_images`); ``options`` go to the runtime's exporter."""
        key = f"{runtime.name}-{precision}"
        if key not in self._cache:
            path = self.workdir / f"{self.tag}-{key}{runtime.suffix}"
            calibration = self.calibration_images() if precision == "int8" else None
            if precision == "int8" and self.calibration is None:
                # ranges from noise time the same but need not compute the same: latency only
                options.setdefault("verify", False)
            runtime.export(self.model, path, info=self.info, precision=precision, calibration=calibration, **options)
            self._cache[key] = path
        return self._cache[key]

    def exported_file(self, backend: str) -> Path:
        """The file a bench path ran (exported already by its runner)."""
        runtime, precision = bench_path(backend)
        path = runtime.probe_file(self, precision)
        if path is None:
            raise ConfigError(f"{backend} runs no exported file")
        return path

    def pickled(self, backend: str) -> Path:
        """The module ``backend`` runs, saved whole for a memory probe to load."""
        key = f"pickled-{backend}"
        if key not in self._cache:
            path = self.workdir / f"{self.tag}-{backend}.pt"
            torch.save(self.folded() if backend == "channels_last" else self.graph, path)
            self._cache[key] = path
        return self._cache[key]

    def runner(self, backend: str, threads: int) -> Callable[[Tensor], Any]:
        runtime, precision = bench_path(backend)
        runtime.check(precision)
        return runtime.bench_runner(self, precision, threads)


def _time_side_by_side(entries, name, threads, batch_sizes, size, mult_adds, runs, warmup, memory) -> list[BenchResult]:
    """Time every backend of ours and the reference's at one thread count, in ``ROUNDS``
    rounds that visit each in turn, so that drift of a noisy machine (clock, neighbours)
    reaches all alike; each round's runs are back to back, as a deployed model would run.
    PyTorch's paths run here; an exported file runs in a timing process of its own
    (:mod:`mobilenets.runtimes.timing`: runtimes sharing one process slowed each other).
    With ``memory``, each configuration's memory is then measured in a process of its own."""
    results, calls, files = [], {}, {}
    for source, prepared, chosen in entries:
        for backend in chosen:
            runtime, precision = bench_path(backend)
            run = path = None
            try:
                if runtime.suffix:
                    runtime.check(precision)
                    path = runtime.probe_file(prepared, precision)  # exported here, timed elsewhere
                else:
                    run = prepared.runner(backend, threads)
                error = ""
            except Exception as exc:  # one broken path must not hide the others
                error = error_line(exc)
            for batch in batch_sizes:
                result = BenchResult(name, source, backend, batch, threads, size, mult_adds, error=error)
                results.append(result)
                if path is not None:
                    files[id(result)] = (runtime.name, precision, path, (batch, 3, size, size))
                elif run is not None:
                    calls.update(_warmed_call(result, run, batch, size, warmup))
    by_id = {id(result): result for result in results}
    engines = {key: bench_path(by_id[key].backend)[0].name for key in calls}
    per_round = max(1, -(-runs // ROUNDS))
    with TimingProcesses(files, threads=threads, runs=per_round, warmup=warmup) as timed:
        turns = timed.turns
        engines.update({key: f"process {key}" for key in turns})  # another process: wait for its threads
        times = alternating_ms(calls, rounds=ROUNDS, runs=per_round, engines=engines, turns=turns)
    for key, message in timed.errors.items():
        by_id[key].error = message
    timed_results = [by_id[key] for key in times if key not in timed.errors]
    for result in timed_results:
        samples = times[id(result)]
        result.median_ms, result.p90_ms = statistics.median(samples), float(np.percentile(samples, 90))
    if memory:
        preparations = {(source, backend): prepared for source, prepared, chosen in entries for backend in chosen}
        _measure_memory(timed_results, preparations, size, threads, warmup + 1)
    return results


def _measure_memory(results: list[BenchResult], preparations: dict, size: int, threads: int, runs: int) -> None:
    """Each result's memory (``isolated_memory``), the probes side by side, one per core: each
    process measures only its own resident memory, so they change each other's wait, not their
    figures.  The files they load are made first, here, one at a time."""
    from concurrent.futures import ThreadPoolExecutor

    probes = []
    for result in results:
        runtime, precision = bench_path(result.backend)
        try:
            path = runtime.probe_file(preparations[result.source, result.backend], precision)
        except Exception as exc:  # noqa: BLE001 - the timings stand without it
            _no_memory_figure(result, exc)
            continue
        if path is not None:  # (compile is not measured)
            probes.append((result, (result.backend, path, result.batch_size, size, threads, runs)))
    with ThreadPoolExecutor(max_workers=max(1, min(len(probes), os.cpu_count() or 1))) as pool:
        futures = [(result, pool.submit(isolated_memory, *args)) for result, args in probes]
    for result, future in futures:
        try:
            result.peak_rss_mb, result.run_mb = future.result()
        except Exception as exc:  # noqa: BLE001
            _no_memory_figure(result, exc)


def _no_memory_figure(result: BenchResult, exc: Exception) -> None:
    warnings.warn(f"{result.label} {result.backend}: no memory figure ({error_line(exc)})", stacklevel=2)


def _warmed_call(result: BenchResult, run: Callable[[Tensor], Any], batch: int, size: int, warmup: int) -> dict:
    """{id(result): a call of ``run`` on a batch}, after ``warmup`` runs; {} (the error noted) if it fails."""
    x = torch.randn(batch, 3, size, size)
    try:
        for _ in range(warmup):
            run(x)
    except Exception as exc:  # noqa: BLE001 - reported in the result's row
        result.error = error_line(exc)
        return {}
    return {id(result): lambda: run(x)}


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
    unknown = [b for b in backends if b not in bench_paths()]
    if unknown:
        raise ConfigError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(bench_paths())}")
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
            task = get_task(info.get("task") or "classification")
            model_backends = [b for b in backends if bench_path(b)[0].serves(task, bench_path(b)[1])]
            prepared = PreparedModel(model.eval(), info, workdir, calibration, name)
            mult_adds = profile(prepared.graph, (3, size, size)).mult_adds
            entries = [("mobilenets", prepared, model_backends)]
            if references and name in TORCHVISION_NAMES:
                reference = _reference_model(name).eval()
                reference.has_weights = False
                if weight_file:
                    with contextlib.suppress(WeightsError):  # our layout: the reference stays untrained
                        load_weights(reference, weight_file)
                        reference.has_weights = True
                ref_backends = [b for b in model_backends if b in bench_path(b)[0].reference_paths]
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
                    progress(f"{name} {source} {backend}: no accuracy ({error_line(exc)})")
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


def fastest_here(results: Sequence[BenchResult], tolerance: float = 0.5) -> list[str]:
    """One verdict per model, batch size and thread count: the fastest of our paths measured here;
    where top-1 was measured, only paths within ``tolerance`` points of the best float top-1 (eager
    or fp32) compete, and faster paths that lost more are named with their top-1."""
    verdicts = []
    ours = [r for r in results if r.source == "mobilenets" and r.median_ms]
    for key in dict.fromkeys((r.model, r.batch_size, r.threads) for r in ours):
        rows = sorted((r for r in ours if (r.model, r.batch_size, r.threads) == key), key=lambda r: r.median_ms)
        reference = [r.top1 for r in rows if r.top1 is not None and bench_path(r.backend)[1] in ("eager", "fp32")]
        floor = max(reference) - tolerance if reference else None
        fit = [r for r in rows if floor is None or (r.top1 is not None and r.top1 >= floor)]
        if not fit:
            continue
        best = fit[0]
        line = f"fastest here for {key[0]} (batch {key[1]}, {key[2]} threads): {best.backend} {best.median_ms:.2f} ms"
        if floor is not None:
            line += f", top-1 {best.top1:.1f}% (fp32 {max(reference):.1f}%)"
            lost = [r for r in rows[: rows.index(best)] if r.top1 is not None]
            if lost:
                named = ", ".join(f"{r.backend} {r.median_ms:.2f} ms at {r.top1:.1f}%" for r in lost)
                line += f"; faster but more than {tolerance} points lower: {named}"
        slower = rows[rows.index(best) + 1 :][:3]
        if slower:
            line += "; then " + ", ".join(f"{r.backend} {r.median_ms / best.median_ms:.2f}x its time" for r in slower)
        verdicts.append(line)
    return verdicts


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
    calls = {path: (lambda session=ort_session(path): session.run(None, {"image": x.numpy()})) for path in (fp32, int8)}
    for call in calls.values():
        call()  # first-call allocations
    times = alternating_ms(calls, rounds=ROUNDS, runs=-(-runs // ROUNDS))
    return statistics.median(times[fp32]), statistics.median(times[int8])


# the instructions int8 and bf16 speed depend on, as /proc/cpuinfo names them
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "asimddp")


def cpu_features() -> list[str]:
    """Which of :data:`SPEED_FLAGS` this CPU has (Linux; empty elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                return [flag for flag in SPEED_FLAGS if flag in flags]
    return []


def cpu_description() -> str:
    """The CPU's name, family/model where the name is generic ("AMD EPYC"), and its int8/bf16 instructions."""
    family = model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            family = value.strip() if key.strip() == "cpu family" and not family else family
            model = value.strip() if key.strip() == "model" and not model else model
    ident = f" family {family} model {model}" if family else ""
    return f"{cpu_name()}{ident} ({', '.join(cpu_features()) or 'no AVX2'})"


def machine_description(threads: Sequence[int]) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for runtime in list_runtimes():
        with contextlib.suppress(PackageNotFoundError, ValueError):
            versions[runtime.name] = version(runtime.package or "torch")
    return {
        "cpu": cpu_description(),
        "logical_cpus": os.cpu_count(),
        "runtimes": versions,
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
    markers = dict(zip(bench_paths(), "osD^v<>phP*X"))
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
