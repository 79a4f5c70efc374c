"""Shared fixtures.  Real data lives in ``../shared/data`` beside the checkout
(override with MOBILENETS_SHARED_DATA); it is never copied into the repo."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MOBILENETS_SHARED_DATA", REPO.parent / "shared" / "data"))
TORCHVISION_V2_WEIGHTS = SHARED_DATA / "weights" / "mobilenet_v2-b0353104.pth"


def load_script(name: str, monkeypatch=None):
    """benchmarks/NAME.py as a module; with ``monkeypatch`` it is in sys.modules while the test runs
    (a script whose dataclasses look their module up needs that before it runs)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    if monkeypatch is not None:
        monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def spy_on_detector_loss(model) -> dict:
    """Record what a training detector's ``compute_loss`` is given (``"logits"``: the class logits,
    ``"matched"``: each image's default-box matches), in the dict returned, on every call."""
    seen, compute_loss = {}, model.compute_loss

    def spy(targets, head_outputs, anchors, matched_idxs):
        seen.update(logits=head_outputs["cls_logits"], matched=matched_idxs)
        return compute_loss(targets, head_outputs, anchors, matched_idxs)

    model.compute_loss = spy
    return seen


def background_cross_entropy(seen: dict, image: int):
    """Each default box's cross-entropy against background in image ``image`` of the last call
    :func:`spy_on_detector_loss` saw: what mining an image without objects ranks."""
    logits = seen["logits"][image]
    return torch.nn.functional.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long), reduction="none")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def quick_turns(monkeypatch):
    """Timed rounds without the pauses between turns that let the last runtime's threads go idle
    (up to 0.5 s a turn): for tests of what a timing command reports and chooses, not of its figures."""
    from mobilenets.cost import latency

    monkeypatch.setattr(latency, "SETTLE_BETWEEN_RUNTIMES_S", 0.0)
    monkeypatch.setattr(latency, "SETTLE_WITHIN_RUNTIME_S", 0.0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set MOBILENETS_SHARED_DATA)")
    return SHARED_DATA
