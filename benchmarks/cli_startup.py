"""How long the command line takes to answer ``--help`` and a mistyped option.

    python benchmarks/cli_startup.py [--runs 5]

Each command runs in a fresh Python process (as a user's shell would start it),
``--runs`` times, taking turns so a noisy machine slows all alike; the table gives
the median wall time.  Two references run in the same rounds: a bare interpreter
(``python -c pass``, the floor) and ``import torch`` (what every command paid
before torch was imported lazily).  The goal is well under a second for every row
that does not need a model.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
COMMANDS = ["models", "profile", "train", "eval", "predict", "plot", "decouple", "export", "bench"]


def cases() -> dict[str, list[str]]:
    cli = [sys.executable, "-c", "import sys; from mobilenets.cli import main; sys.exit(main())"]
    rows = {"python -c pass (floor)": [sys.executable, "-c", "pass"]}
    rows["import torch (reference)"] = [sys.executable, "-c", "import torch"]
    rows["mobilenets --help"] = [*cli, "--help"]
    rows.update({f"mobilenets {c} --help": [*cli, c, "--help"] for c in COMMANDS})
    rows["mobilenets train --epochs 0 (refused)"] = [*cli, "train", "--model", "mobilenet_v2", "--epochs", "0"]
    return rows


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env = {"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}
    rows = cases()
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.runs):
        for name, argv in rows.items():
            start = time.perf_counter()
            done = subprocess.run(argv, capture_output=True, env=env, check=False)
            times[name].append(time.perf_counter() - start)
            expected = 2 if "refused" in name else 0
            if done.returncode != expected:
                raise SystemExit(f"{name} exited {done.returncode}: {done.stderr.decode()[-300:]}")
    width = max(map(len, rows))
    print(f"{'command':{width}s}  median s  max s")
    for name, samples in times.items():
        print(f"{name:{width}s}  {statistics.median(samples):8.3f}  {max(samples):5.3f}")
    print(f"\n{cpu_name()}, Python {platform.python_version()}, {args.runs} runs per row")


if __name__ == "__main__":
    main()
