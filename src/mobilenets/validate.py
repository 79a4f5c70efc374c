"""One place for what a setting may be: the rules both the API and the CLI check.

Each :class:`Rule` says what a number must be ("a positive integer") once; the
Python API calls ``rule.check(value, "epochs")`` and raises
:class:`~mobilenets.errors.ConfigError`, and the command line uses
``type=rule.argtype`` so that argparse answers a bad ``--epochs 0`` with one line
and exit code 2, in the same words.  The named choices of the commands
(calibration methods, decompositions, benchmark backends...) live here too,
beside no torch import, so that ``mobilenets --help`` answers before torch loads.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = [
    "CALIBRATION_METHODS",
    "PT2E_CALIBRATION_METHODS",
    "DECOMPOSITION_METHODS",
    "DECOUPLE_ORDERS",
    "FRACTION",
    "GREATER_THAN_ONE",
    "LATENCY_BACKENDS",
    "NON_NEGATIVE",
    "NON_NEGATIVE_INT",
    "PERCENTILE",
    "POSITIVE",
    "POSITIVE_INT",
    "PRECISIONS",
    "PROBABILITY",
    "UNIT_FRACTION",
    "WEIGHT_ROUNDING",
    "Rule",
    "check_device",
    "csv_of",
    "one_of",
]

# Named choices (the modules that implement them import these).
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")  # int8 activation ranges (ONNX Runtime)
PT2E_CALIBRATION_METHODS = ("percentile", "histogram", "minmax")  # the same for PT2E (ExecuTorch, LiteRT)
WEIGHT_ROUNDING = ("gptq", "nearest")  # int8 dense weights
DECOMPOSITION_METHODS = ("cp", "tucker", "spatial", "channel")  # decoupling's baselines
DECOUPLE_ORDERS = ("dw_pw", "pw_dw")
LATENCY_BACKENDS = ("onnxruntime", "channels_last")  # where a latency budget is measured
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Rule:
    """What a numeric setting must be: parsed by ``parse``, accepted by ``test``."""

    parse: Callable[[str], Any]
    test: Callable[[Any], bool]
    wording: str  # completes "must be ..."

    def problem(self, value: Any) -> str | None:
        """None if ``value`` is acceptable, else what is wrong ("must be ..., got ...")."""
        number_type = int if self.parse is int else (int, float)
        ok = isinstance(value, number_type) and not isinstance(value, bool)
        if ok and isinstance(value, float) and not math.isfinite(value):
            ok = False
        if ok and not self.test(value):
            ok = False
        return None if ok else f"must be {self.wording}, got {value!r}"

    def check(self, value: Any, name: str, *, cli: str | None = None) -> Any:
        """Return ``value`` or raise :class:`ConfigError` naming ``name`` (``cli``: the option)."""
        problem = self.problem(value)
        if problem:
            raise ConfigError(f"{name} {problem}", cli=f"{cli or '--' + name.replace('_', '-')} {problem}")
        return value

    def argtype(self, text: str) -> Any:
        """argparse ``type=``: parse and check one option value."""
        try:
            value = self.parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.wording}, got {text!r}") from None
        problem = self.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value


POSITIVE_INT = Rule(int, lambda v: v >= 1, "a positive integer")
NON_NEGATIVE_INT = Rule(int, lambda v: v >= 0, "an integer >= 0")
POSITIVE = Rule(float, lambda v: v > 0, "a positive number")
NON_NEGATIVE = Rule(float, lambda v: v >= 0, "a number >= 0")
FRACTION = Rule(float, lambda v: 0 <= v < 1, "in [0, 1)")  # label smoothing, dropout, EMA decay
UNIT_FRACTION = Rule(float, lambda v: 0 < v <= 1, "in (0, 1]")  # retained energy
PROBABILITY = Rule(float, lambda v: 0 <= v <= 1, "in [0, 1]")
PERCENTILE = Rule(float, lambda v: 0 < v <= 100, "a percentile in (0, 100]")
GREATER_THAN_ONE = Rule(float, lambda v: v > 1, "a factor > 1")


def one_of(value: Any, name: str, choices: Sequence[str], *, cli: str | None = None) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise :class:`ConfigError`."""
    if value not in choices:
        problem = f"must be one of {', '.join(choices)}, got {value!r}"
        raise ConfigError(f"{name} {problem}", cli=f"{cli or '--' + name.replace('_', '-')} {problem}")
    return value


def csv_of(rule: Rule | None = None, choices: Sequence[str] | None = None) -> Callable[[str], list[Any]]:
    """argparse ``type=`` for a comma-separated list whose items follow ``rule`` or ``choices``."""

    def parse(text: str) -> list[Any]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        if choices is not None:
            bad = [x for x in items if x not in choices]
            if bad:
                raise argparse.ArgumentTypeError(f"{', '.join(bad)}: choose from {', '.join(choices)}")
            return items
        return [rule.argtype(x) for x in items] if rule else items

    return parse


def check_device(device: str, *, cli: str = "--device") -> str:
    """``device`` if torch can use it on this machine, else a :class:`ConfigError` saying why."""
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'",
            cli=f"{cli}: unknown device {device!r}; use cpu, cuda or cuda:N",
        ) from None
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r}: no CUDA GPU is available on this machine; use 'cpu'",
                cli=f"{cli} {device}: no CUDA GPU is available on this machine; use --device cpu",
            )
        index = torch.device(device).index
        if index is not None and index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} is not available on this machine; use 'cpu'")
    elif kind not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {device!r} is not supported; use 'cpu' or 'cuda'")
    return device


def check_model(value: Any, name: str = "model") -> Any:
    """``value`` if it is a PyTorch module, else a :class:`ConfigError` saying what to pass
    (a model name or a file path where a model object is expected is the usual slip)."""
    if callable(getattr(value, "named_modules", None)) and callable(getattr(value, "state_dict", None)):
        return value
    hint = ""
    if isinstance(value, str):
        hint = f"; build it first: mobilenets.create_model({value!r}) or mobilenets.load_model(path)"
    raise ConfigError(f"{name} must be a torch.nn.Module, got {type(value).__name__} {value!r:.60}{hint}")


def exported_batch(images: Any, shape: Sequence[int], file: str) -> Any:
    """``images`` as the float batch (N, *shape) an exported file takes; an InputShapeError naming
    the file otherwise.  What every exported network (ONNX Runtime, ExecuTorch, OpenVINO, LiteRT)
    checks before it runs."""
    import torch

    from .errors import InputShapeError

    images = torch.as_tensor(images).float()
    if images.dim() != 4 or tuple(images.shape[1:]) != tuple(shape):
        raise InputShapeError(
            f"{file} takes images shaped (N, {', '.join(map(str, shape))}), got {tuple(images.shape)}"
        )
    return images


def as_image_batch(value: Any, name: str) -> Any:
    """A numpy array of images as a float tensor (N, C, H, W); a tensor as it is; anything else unchanged."""
    import numpy as np
    import torch

    if isinstance(value, np.ndarray):
        if value.ndim != 4:
            raise ConfigError(f"{name} must be a batch of images (N, C, H, W), got an array of shape {value.shape}")
        return torch.from_numpy(np.ascontiguousarray(value)).float()
    return value
