"""The memory probe: one bench configuration in a fresh process.

``python -m mobilenets.runtimes.probe RUNTIME PRECISION PATH BATCH SIZE THREADS RUNS`` loads
``PATH`` through the runtime's ``probe_runner`` - which imports only that runtime's package, as a
deployment would - notes the resident memory, starts a new high-water mark (Linux:
``/proc/self/clear_refs``), runs it ``RUNS`` times and prints the two figures as JSON.  A process
that has held other models keeps their allocator pools, so in-process figures would mostly
measure the benchmark.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from . import get_runtime


def child_environment(threads: int) -> dict[str, str]:
    """The environment of a child Python process that imports this mobilenets (installed or not)
    and runs ``threads`` threads: what the memory probe and the timing processes start with."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def main(argv: list[str]) -> None:
    name, precision, path = argv[:3]
    batch, size, threads, runs = map(int, argv[3:7])
    run = get_runtime(name).probe_runner(Path(path), precision, threads, (batch, 3, size, size))
    loaded = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    for _ in range(runs):
        run()
    print(json.dumps({"loaded_mb": loaded, "peak_mb": _status_mb("VmHWM")}))


if __name__ == "__main__":
    main(sys.argv[1:])
