"""The host decides: every installed runtime x precision that writes a file, timed on this machine
for one model, and the fastest whose accuracy holds is the one to ship (``export --format auto``).

Each candidate is exported as its runtime exports (and checked against PyTorch there), timed at
batch 1 in alternating rounds, each file in a process of its own (:mod:`.timing`: a noisy host
slows all alike, and no runtime's threads disturb another's; a path's time is its best round's
median, :func:`best_round_median`), and scored: top-1 on labelled
images when given, otherwise agreement with the float PyTorch model's top-1 on the calibration
images (the float model scores 100 %); a detector's COCO mAP or a segmenter's mIoU on labelled
images when given.  The fastest candidate within ``tolerance`` points of the PyTorch model wins.
A detector's or segmenter's candidates are its float ones (fp32, and bf16 where the CPU has it);
without labelled images none is scored, and only fp32 files - each checked against PyTorch by its
exporter - may be chosen: bf16 moved the person detector's mAP50 by 1.2 points.
"""

from __future__ import annotations

import shutil
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import bench_path, bench_paths, error_line, get_runtime, load_exported
from .bench import ROUNDS

FLOAT = ("fp32", "bf16")


@dataclass
class Candidate:
    path: str  # the bench path: "openvino-int8"
    runtime: str
    precision: str
    median_ms: float | None = None
    accuracy: float | None = None  # top-1 %, or agreement with the float model %
    error: str = ""
    chosen: bool = False


def candidate_paths(task: Any, runtimes: Sequence[str] | None = None) -> list[str]:
    """The bench paths that write a file, are installed, run on this CPU and serve ``task``."""
    names = []
    for name, (runtime, precision) in bench_paths().items():
        if not runtime.suffix or (runtimes and runtime.name not in runtimes) or not runtime.available():
            continue
        if runtime.serves(task, precision) and runtime.precision_problem(precision) is None:
            if task.quantizable or precision in FLOAT:
                names.append(name)
    return names


def measure_candidates(prepared: Any, names: Sequence[str], *, threads: int, runs: int,
                       progress: Callable[[str], None]) -> list[Candidate]:  # fmt: skip
    """Export every candidate path of ``prepared`` (a ``bench.PreparedModel``), then time the
    files, each in a process of its own (:mod:`mobilenets.runtimes.timing`)."""
    from .timing import time_in_processes

    size = int(prepared.info["resolution"])
    candidates, files = [], {}
    for name in names:
        runtime, precision = bench_path(name)
        candidate = Candidate(name, runtime.name, precision)
        candidates.append(candidate)
        progress(f"exporting and checking {name}")
        try:
            runtime.check(precision)
            files[name] = (runtime.name, precision, runtime.probe_file(prepared, precision))
        except Exception as exc:  # one path that fails must not hide the others
            candidate.error = error_line(exc)
            progress(f"{name}: {candidate.error}")
    progress(f"timing {len(files)} paths in {ROUNDS} alternating rounds, each in a process of its own")
    per_round = max(1, -(-runs // ROUNDS))
    times = time_in_processes(files, shape=(1, 3, size, size), threads=threads, rounds=ROUNDS, runs=per_round)
    for candidate in candidates:
        measured = times.get(candidate.path)
        if isinstance(measured, str):
            candidate.error = measured
            progress(f"{candidate.path}: {measured}")
        elif measured:
            candidate.median_ms = best_round_median(measured, per_round)
    return candidates


def best_round_median(times: Sequence[float], per_round: int) -> float:
    """The lowest of a path's per-round medians: a round that something else on the host disturbed
    does not decide the path's time, an undisturbed one does.  (In one process beside other runtimes
    a LiteRT interpreter ran at twice its time for whole rounds - 2.0 ms, then 5.3 and 4.8 on AMD EPYC
    Zen 5 - the reason each file is now timed in a process of its own.)"""
    rounds = [times[start : start + per_round] for start in range(0, len(times), per_round)]
    return min(statistics.median(samples) for samples in rounds)


def score_candidates(prepared: Any, candidates: Sequence[Candidate], headline: Callable[[Any], float],
                     progress: Callable[[str], None]) -> float:  # fmt: skip
    """Fill in each timed candidate's score, its file loaded as ``eval --exported`` loads it
    (``headline``: a model -> its task's score in %); returns the PyTorch model's."""
    reference = headline(prepared.model)
    for candidate in candidates:
        if candidate.median_ms is None:
            continue
        try:
            runtime = get_runtime(candidate.runtime)
            candidate.accuracy = headline(load_exported(prepared.exported_file(candidate.path), runtime=runtime))
        except Exception as exc:  # noqa: BLE001 - an unscorable path is not chosen
            candidate.error = error_line(exc)
        progress(f"{candidate.path}: scored {'-' if candidate.accuracy is None else f'{candidate.accuracy:.2f} %'}")
    return reference


def pick(candidates: Sequence[Candidate], reference: float | None, tolerance: float) -> Candidate:
    """The fastest candidate within ``tolerance`` points of ``reference``; without one (nothing
    scored), the fastest that computes in fp32, as the PyTorch model it was checked against."""
    fit = [c for c in candidates if c.median_ms is not None and not c.error]
    if reference is not None:
        fit = [c for c in fit if c.accuracy is not None and c.accuracy >= reference - tolerance]
    else:
        fit = [c for c in fit if c.precision == "fp32"]
    if not fit:
        raise ConfigError("no runtime produced a file that runs and keeps the accuracy here; see the table above")
    best = min(fit, key=lambda c: c.median_ms)
    best.chosen = True
    return best


def unscored_note(candidates: Sequence[Candidate], chosen: Candidate) -> str | None:
    """When nothing was scored: the faster path left out because its precision changes the outputs, if any."""
    faster = [
        c
        for c in candidates
        if c.median_ms and not c.error and c.precision != "fp32" and c.median_ms < chosen.median_ms
    ]
    if not faster:
        return None
    best = min(faster, key=lambda c: c.median_ms)
    return (f"{best.path} ran {chosen.median_ms / best.median_ms:.2f}x faster but computes in {best.precision}, "
            "whose score is unknown without labelled images: give --eval-data DIR to let it be chosen")  # fmt: skip


def copy_export(runtime: Any, source: Path, out: Path) -> list[Path]:
    """Copy the files of one export (a runtime's ``files``) under a new name; returns the copies."""
    from ..files import atomic_write

    written = []
    out.parent.mkdir(parents=True, exist_ok=True)
    for part in runtime.files(source):
        if part.name.startswith(source.name):  # the file itself, or a sidecar "m.pte.json" -> "<out>.json"
            target = out.with_name(out.name + part.name[len(source.name) :])
        else:  # a companion of the same stem: OpenVINO's "m.bin"
            target = out.with_suffix(part.suffix)
        atomic_write(target, lambda tmp, part=part: shutil.copyfile(part, tmp))
        written.append(target)
    return written


def candidates_table(candidates: Sequence[Candidate], reference: float | None, scored_by: str | None) -> str:
    """The paths timed, fastest first; ``scored_by`` names the accuracy column (None: nothing was
    scored - a detector or segmenter without labelled images)."""
    from .._table import format_table

    rows = []
    fastest = min((c.median_ms for c in candidates if c.median_ms), default=None)
    for c in sorted(candidates, key=lambda c: (c.median_ms is None, c.median_ms or 0)):
        timing = "-" if c.median_ms is None else f"{c.median_ms:.2f}"
        ratio = "-" if c.median_ms is None or not fastest else f"{c.median_ms / fastest:.2f}"
        accuracy = "-" if c.accuracy is None else f"{c.accuracy:.2f}"
        scores = [accuracy] if scored_by else []
        rows.append([c.path, timing, ratio, *scores, "<- chosen" if c.chosen else c.error[:60]])
    header = ["runtime path", "median ms", "x fastest", *([scored_by] if scored_by else []), ""]
    text = format_table(header, rows)
    if reference is not None:
        text += f"\nfloat PyTorch model: {reference:.2f} % ({scored_by})"
    return text
