"""Training in real processes: killed with SIGKILL mid-epoch and resumed; two
CPU processes through torchrun (DistributedDataParallel over gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

from mobilenets.cli import main


def train_args(shared_data, out, *extra):
    return [
        "train",
        "--model", "mobilenet_v2",
        "--width-mult", "0.35",
        "--data-dir", str(shared_data / "cifar10"),
        "--train-subset", "240",
        "--val-subset", "40",
        "--batch-size", "16",
        "--epochs", "2",
        "--workers", "0",
        "--no-progress",
        "--out", str(out),
        *extra,
    ]  # fmt: skip


def env():
    # one thread per process: the machine has 2 cores and torchrun starts 2 processes
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(shared_data, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = train_args(shared_data, killed, "--checkpoint-every", "3")
    # Same thread count as this process: float sums are only bit-identical across
    # processes that split their work the same way.
    proc = subprocess.Popen([sys.executable, "-m", "mobilenets", *args], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (killed / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    state = torch.load(killed / "last.pt", weights_only=True)
    assert state["epoch"] == 0 and state["step"] >= 3  # killed inside the first epoch (15 steps)

    assert main(args) == 0  # the same command again resumes
    assert main(train_args(shared_data, straight, "--checkpoint-every", "3")) == 0
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(killed / "last.pt", weights_only=True)
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    metrics = lambda run: [  # noqa: E731
        {k: v for k, v in json.loads(line).items() if "per_s" not in k and "seconds" not in k}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]
    assert metrics(straight) == metrics(killed)


def test_torchrun_two_cpu_processes(shared_data, tmp_path):
    out = tmp_path / "ddp"
    args = train_args(shared_data, out, "--device", "cpu")
    args[args.index("--epochs") + 1] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*command, "-m", "mobilenets", *args], env=env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # rank 0 alone logs and writes
    assert result.stdout.count("training on 2 processes") == 1
    assert result.stdout.count("epoch 1/1:") == 1
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["resolved"]["world_size"] == 2
    assert not any(key.startswith("module.") for key in state["model"])
    record = json.loads((out / "metrics.jsonl").read_text())
    assert record["samples"] == 40  # each validation image counted once across the two shards
    # each process took 15 steps of 8 images (global batch 16): 240 images in all
    assert state["scheduler"]["last_epoch"] == 15
    assert "top-1" in result.stdout and (out / "summary.json").exists()
