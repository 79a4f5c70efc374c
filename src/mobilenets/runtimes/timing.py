"""Exported files timed each in a process of its own, the processes taking turns.

In one process beside ONNX Runtime and OpenVINO, a LiteRT interpreter's turns sometimes ran at
twice their time for whole rounds (AMD EPYC Zen 5, 2 cores: 2.0 ms, then 5.3 and 4.8 ms, with the
cores half idle and no other thread of the process busy; 1.8 ms alone), and LiteRT int8 timed in
one process after LiteRT fp32 ran at 2.3 ms against 1.2 alone. So ``export --format auto`` and
``bench`` time each exported file in a process of its own (``python -m mobilenets.runtimes.timing SPEC``), which
loads only that file's runtime, through the runtime's ``probe_runner`` as the memory probe does;
the processes take turns in alternating rounds, 0.5 s apart, so that drift of a noisy host still
reaches every file alike.

The child's protocol: one JSON line when the file is loaded and has run ``warmup`` times (``{"error": null}``,
or the error line), then for each line read on stdin ``runs`` timed calls back to back, printed as
a JSON list of milliseconds.
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TimingProcesses", "time_in_processes"]


def time_in_processes(files: Mapping[str, tuple[str, str, Path]], *, shape: tuple[int, ...], threads: int,
                      rounds: int, runs: int) -> dict[str, list[float] | str]:  # fmt: skip
    """Milliseconds of each file (key -> (runtime name, precision, path)) on a batch of ``shape``,
    ``runs`` a round for ``rounds`` rounds, one process per file; a file that did not load or
    run gets its error line instead."""
    from ..cost.latency import alternating_ms

    with TimingProcesses({key: (*file, shape) for key, file in files.items()}, threads=threads, runs=runs) as timed:
        turns = timed.turns
        # each file its own "engine": every turn waits for the previous process's threads to stop spinning
        times = alternating_ms({}, rounds=rounds, runs=runs, engines={key: key for key in turns}, turns=turns)
        return {key: timed.errors.get(key) or times[key] for key in files}


class TimingProcesses:
    """Files loaded each in a timing process of its own, waiting for their turns.

    ``files`` maps a key to (runtime name, precision, path, input shape); each process loads its
    file, runs it ``warmup`` times and waits; :meth:`turn` has it time ``runs`` calls back to back.
    A file that does not load, or whose process dies, gets its error line in :attr:`errors`.
    """

    def __init__(self, files: Mapping[Any, tuple[str, str, Path, tuple[int, ...]]], *, threads: int, runs: int,
                 warmup: int = 1) -> None:  # fmt: skip
        self.errors: dict[Any, str] = {}
        self._children: dict[Any, _Child] = {}
        started: list[_Child] = []
        try:
            for key, (runtime, precision, path, shape) in files.items():
                spec = {"runtime": runtime, "precision": precision, "path": str(path), "shape": list(shape),
                        "threads": threads, "runs": runs, "warmup": max(1, warmup)}  # fmt: skip
                started.append(_Child.start(key, spec))  # all load at once; none is timed yet
            for child in started:
                self._admit(child)
        except BaseException:
            # A process that would not start, or an interrupt while they load: the ones started
            # must not outlive this (a traceback kept in a notebook would keep their pipes open).
            for child in started:
                child.kill()
                child.log.close()
            raise

    def _admit(self, child: _Child) -> None:
        """Wait for ``child``'s file to load: keep it for turns, or keep its error line."""
        ready = child.reply()
        if ready is None:  # it died before it could say why
            self.errors[child.key] = child.failure()
        elif ready["error"]:
            self.errors[child.key] = ready["error"]
            child.close()
        else:
            self._children[child.key] = child

    @property
    def turns(self) -> dict[Any, Callable[[], list[float]]]:
        """For each file loaded and waiting, a call that times one of its turns (``alternating_ms``'s
        ``turns``)."""
        return {key: functools.partial(self.turn, key) for key in self._children}

    def turn(self, key: Any) -> list[float]:
        """Milliseconds of one turn of ``key``'s file; [] once its process has died (none of its
        figures then stand: its error line is in :attr:`errors`)."""
        child = self._children.get(key)
        if child is None:
            return []
        reply = child.reply("go")
        if reply is None:
            self.errors[key] = child.failure()
            del self._children[key]
            return []
        return reply

    def close(self) -> None:
        for child in self._children.values():
            child.close()
        self._children.clear()

    def __enter__(self) -> TimingProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _Child:
    """One file's timing process."""

    key: str
    process: subprocess.Popen
    log: Any  # its stderr: a temporary file, so that a chatty runtime never fills a pipe and blocks

    @classmethod
    def start(cls, key: str, spec: dict[str, Any]) -> _Child:
        from .probe import child_environment

        env = child_environment(spec["threads"])
        argv = [sys.executable, "-m", "mobilenets.runtimes.timing", json.dumps(spec)]
        log = tempfile.TemporaryFile(mode="w+")
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                   env=env)  # fmt: skip
        return cls(key, process, log)

    def reply(self, request: str | None = None) -> Any:
        """The child's next JSON line (after sending ``request``), or None when it ended without one."""
        try:
            if request is not None:
                self.process.stdin.write(request + "\n")
                self.process.stdin.flush()
            line = self.process.stdout.readline()
        except BrokenPipeError:
            return None
        return json.loads(line) if line.strip() else None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):  # a pipe whose reader is gone
                stream.close()

    def failure(self) -> str:
        self.kill()
        self.log.seek(0)
        lines = self.log.read().strip().splitlines()
        self.log.close()
        return f"the timing process failed: {(lines or ['no message'])[-1][:120]}"

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.log.close()


def _child(spec: dict[str, Any]) -> None:
    # Only the registry and the file's runtime are imported here: timings_ms (cost.latency) would bring
    # torch, over a second of start-up per process, for a loop of four lines.
    from . import error_line, get_runtime

    try:
        run = get_runtime(spec["runtime"]).probe_runner(
            Path(spec["path"]), spec["precision"], spec["threads"], tuple(spec["shape"])
        )
        for _ in range(spec.get("warmup", 1)):
            run()  # first-call allocations; a file that cannot run says so here
    except Exception as exc:  # noqa: BLE001 - reported as the file's error line
        print(json.dumps({"error": error_line(exc)}), flush=True)
        return
    print(json.dumps({"error": None}), flush=True)
    for _ in sys.stdin:
        samples = []
        for _ in range(spec["runs"]):
            start = time.perf_counter()
            run()
            samples.append(1000 * (time.perf_counter() - start))
        print(json.dumps(samples), flush=True)


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
