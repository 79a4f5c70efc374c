"""The plan of a conversion: which convs, the sizes they run at, their costs, and copies with layers
replaced."""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..validate import as_image_batch
from .layers import DecoupledConv, decoupled_mult_adds, max_rank, singular_values
from .methods import ConversionMethod

__all__ = [
    "LayerPlan",
    "calibration_batches",
    "capture",
    "conv_mult_adds",
    "decoupled_copy",
    "eligible_convs",
    "forward_hooks",
    "input_size_of",
    "layer_error",
    "names_to_convert",
    "over_calls",
    "param_count",
    "probe_shapes",
    "replace_module",
]


def eligible_convs(model: nn.Module, *, zero_padding_only: bool = False) -> tuple[list[str], dict[str, str]]:
    """Names of the regular k x k convs, and why each other conv is skipped (each
    conv once, under its first name, however many times it is registered);
    ``zero_padding_only``: reflect- and other padded convs too (the decompositions
    run their factors with zero padding; decoupling keeps any padding mode)."""
    eligible, skipped = [], {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d) or isinstance(module, DecoupledConv):
            continue
        if module.groups != 1:
            skipped[name] = "grouped or depthwise (already separable per group)"
        elif module.kernel_size == (1, 1):
            skipped[name] = "1x1 (already pointwise)"
        elif isinstance(module.padding, str):
            skipped[name] = f"padding={module.padding!r} (not supported)"
        elif zero_padding_only and module.padding_mode != "zeros":
            skipped[name] = f"padding_mode={module.padding_mode!r} (the decompositions pad with zeros)"
        else:
            eligible.append(name)
    return eligible, skipped


def input_size_of(model: nn.Module, input_size) -> tuple[tuple[int, int, int], str]:
    """The (C, H, W) costs and latency are counted at, and where it came from (said in errors).

    ``input_size`` wins; else the model's recorded ``in_channels`` and
    ``default_resolution`` (the zoo's models carry both); else the first conv's
    input channels at 224 x 224, the size torchvision's classifiers are built for."""
    if input_size is not None:
        if not (
            isinstance(input_size, (tuple, list))
            and len(input_size) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_size)
        ):
            raise ConfigError(f"input_size must be (channels, height, width), positive integers; got {input_size!r}")
        return tuple(input_size), "input_size"
    guesses = []
    channels = getattr(model, "in_channels", None)
    if not isinstance(channels, int):
        # called once there is a conv to convert, so there is a first conv
        name, first = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
        channels = first.in_channels
        guesses.append(f"in_channels={channels} from its first conv {name!r}")
    resolution = getattr(model, "default_resolution", None)
    if not isinstance(resolution, int):
        resolution = 224
        guesses.append("224 x 224 assumed: the model records no resolution")
    return (channels, resolution, resolution), "; ".join(guesses) or "the size the model records"


@contextlib.contextmanager
def forward_hooks(model: nn.Module, names: list[str], hook: Callable[..., None]):
    """``hook(module, args, output, name=...)`` on each named submodule, the model in
    eval mode, for the duration of the block; hooks and mode are restored after."""
    handles = [model.get_submodule(name).register_forward_hook(functools.partial(hook, name=name)) for name in names]
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


@torch.no_grad()
def capture(
    model: nn.Module, names: list[str], x: Tensor, *, keep_inputs: bool = False, keep_outputs: bool = False
) -> dict[str, dict[str, Any]]:
    """What one forward pass shows of the named convs: per call (a conv may run more
    than once) its input and output spatial sizes, and optionally the tensors;
    ``in_hw``/``out_hw``/``input`` repeat the first call's for the common case."""
    seen: dict[str, dict[str, Any]] = {}

    def hook(module, args, output, name):
        entry = seen.setdefault(name, {"calls": [], "inputs": [], "outputs": []})
        entry["calls"].append((tuple(args[0].shape[-2:]), tuple(output.shape[-2:])))
        if keep_inputs:
            entry["inputs"].append(args[0].detach())
        if keep_outputs:
            entry["outputs"].append(output.detach())

    with forward_hooks(model, names, hook):
        model(x)
    missing = [n for n in names if n not in seen]
    if missing:
        raise ConfigError(f"layers not used by the forward pass: {', '.join(missing)}")
    for entry in seen.values():
        entry["in_hw"], entry["out_hw"] = entry["calls"][0]
        if keep_inputs:
            entry["input"] = entry["inputs"][0]
        if keep_outputs:
            entry["output"] = entry["outputs"][0]
    return seen


def probe_shapes(model: nn.Module, names: list[str], x: Tensor, size_origin: str) -> dict[str, dict[str, Any]]:
    """:func:`capture` on the first input, a foreign model's failure to run on it told as one line."""
    try:
        return capture(model, names, x, keep_inputs=True)
    except ConfigError:
        raise
    except Exception as error:  # whatever the model raises on an input it was not built for
        shape = " x ".join(map(str, x.shape[1:]))
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"{type(model).__name__} does not run on a {shape} input ({size_origin}): {reason}; "
            "pass input_size=(C, H, W) with the size it takes",
            cli=f"the model does not run on a {shape} input: {reason}",
        ) from None


def over_calls(shape: dict[str, Any], cost: Callable[[tuple, tuple], int]) -> int:
    """A layer's cost summed over every call of it in the forward pass."""
    return sum(cost(in_hw, out_hw) for in_hw, out_hw in shape["calls"])


def conv_mult_adds(conv: nn.Conv2d, out_hw) -> int:
    n, m_per_group, kh, kw = conv.weight.shape
    return kh * kw * m_per_group * n * out_hw[0] * out_hw[1]


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` where ``name`` is, and wherever else the same conv is registered
    (a conv shared under two names must stay one conv)."""
    target = model.get_submodule(name)
    aliases = [alias for alias, m in model.named_modules(remove_duplicate=False) if m is target]
    for alias in aliases:
        parent_name, _, child = alias.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


class LayerPlan:
    """What rank selection needs to know about one eligible conv."""

    def __init__(self, name: str, conv: nn.Conv2d, shapes: dict[str, Any], order: str):
        self.name, self.conv, self.order = name, conv, order
        self.shapes = shapes
        self.in_hw, self.out_hw = shapes["in_hw"], shapes["out_hw"]
        self.original_cost = over_calls(shapes, lambda i, o: conv_mult_adds(conv, o))
        self.max_rank = max_rank(conv, order)
        sigma2 = singular_values(conv.weight, order) ** 2
        cumulative = sigma2.sum(0).cumsum(0)  # energy kept by the top-T terms of every channel
        self.retained = (cumulative / cumulative[-1].clamp(min=1e-300)).tolist()

    def cost(self, rank: int) -> int:
        return over_calls(self.shapes, lambda i, o: decoupled_mult_adds(self.conv, rank, self.order, i, o))

    def cheaper_ranks(self) -> list[int]:
        """Ranks whose decoupling costs less than the original conv, ascending."""
        return [t for t in range(1, self.max_rank + 1) if self.cost(t) < self.original_cost]


def decoupled_copy(model: nn.Module, ranks: dict[str, int], order: str) -> nn.Module:
    """A copy of ``model`` with each named conv decoupled at its rank (no refit): what an
    allocation is scored or timed on before the chosen one is built for real."""
    converted = copy.deepcopy(model)
    for name, t in ranks.items():
        replace_module(converted, name, DecoupledConv.from_conv(model.get_submodule(name), t, order))
    return converted


def calibration_batches(calibration, model: nn.Module, size: tuple[int, int, int]) -> list[Tensor]:
    """Batches of calibration images from a tensor, an iterable of batches (or of
    (images, labels)), or a folder of image files preprocessed as the model expects."""
    if calibration is None:
        return []
    calibration = as_image_batch(calibration, "calibration")
    if isinstance(calibration, (str, Path)):
        from ..data import calibration_images
        from ..predict import default_data_info

        info = default_data_info(model)
        calibration = calibration_images(calibration, style=info["transforms"], resolution=size[-1])
    if isinstance(calibration, Tensor):
        return list(calibration.split(32))
    batches = []
    for item in calibration:
        batches.append(item[0] if isinstance(item, (tuple, list)) else item)
    if not batches:
        raise ConfigError("the calibration data holds no images")
    return batches


@torch.no_grad()
def layer_error(original: nn.Module, replacement: nn.Module, x: Tensor) -> float:
    reference = original(x)
    return ((replacement(x) - reference).norm() / reference.norm().clamp(min=1e-12)).item()


def names_to_convert(
    model: nn.Module, method: ConversionMethod, layers: Iterable[str] | None
) -> tuple[list[str], dict[str, str]]:
    """The convs ``method`` converts (all eligible ones, or those of ``layers``), and why others are skipped."""
    names, skipped = eligible_convs(model, zero_padding_only=not method.any_padding)
    if layers is not None:
        wanted = set(layers)
        unknown = wanted - set(names)
        if unknown:
            raise ConfigError(f"not eligible regular convs: {', '.join(sorted(unknown))}")
        names = [n for n in names if n in wanted]
    if not names:
        raise ConfigError(
            "the model has no regular k x k convolutions to convert"
            + (f" (skipped: {'; '.join(f'{n}: {r}' for n, r in list(skipped.items())[:4])})" if skipped else "")
        )
    if "" in names:
        raise ConfigError("the model is a single conv: wrap it first, e.g. nn.Sequential(conv)")
    return names, skipped
