"""Whole-network conversion: pick each layer's rank, swap the modules, report what it cost.

``decouple(model, ...)`` and ``decompose(model, method=...)`` copy the model,
replace every eligible regular conv (groups = 1, kernel larger than 1x1) and
return ``(new_model, report)``; the input model is never modified.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .._table import format_table, human
from ..cost import profile
from ..cost.latency import median_ms
from ..errors import ConfigError
from ..validate import LATENCY_BACKENDS, as_image_batch, check_model
from .layers import ORDERS, DecoupledConv, decoupled_mult_adds, max_rank, singular_values
from .methods import ConversionMethod, conversion_method, decoupling

__all__ = [
    "DecoupleReport",
    "LayerReport",
    "apply_converted_structure",
    "apply_decoupled_structure",
    "calibration_batches",
    "decompose_single",
    "decouple",
    "eligible_convs",
    "input_size_of",
    "layer_error",
    "param_count",
    "probe_shapes",
    "refit",
    "skipped_summary",
]


@dataclass
class LayerReport:
    name: str
    kernel: tuple[int, int, int, int]  # N, M, kh, kw
    out_hw: tuple[int, int]
    rank: int | str | None  # None: left as it was (see ``note``); a pipeline's: each step's ranks
    calls: int = 1  # times the forward pass runs it (costs count every call)
    note: str = ""
    retained_energy: float | None = None
    relative_error: float | None = None
    mult_adds_before: int = 0
    mult_adds_after: int = 0
    params_before: int = 0
    params_after: int = 0


@dataclass
class DecoupleReport:
    method: str  # "decouple-dw_pw", "decouple-pw_dw", "cp", "tucker", "spatial"
    layers: list[LayerReport]
    mult_adds_before: int
    mult_adds_after: int
    params_before: int
    params_after: int
    refined: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # latency, accuracy (added by the CLI/benchmarks)
    skipped: dict[str, str] = field(default_factory=dict)  # convs not eligible, and why

    @property
    def reduction(self) -> float:
        return self.mult_adds_before / max(1, self.mult_adds_after)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reduction": self.reduction}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        rows = [
            [
                layer.name,
                "x".join(map(str, layer.kernel)),
                "kept" if layer.rank is None else str(layer.rank),
                "" if layer.retained_energy is None else f"{100 * layer.retained_energy:.2f}%",
                "" if layer.relative_error is None else f"{layer.relative_error:.2e}",
                human(layer.mult_adds_before),
                human(layer.mult_adds_after),
                human(layer.params_before),
                human(layer.params_after),
                layer.note,
            ]
            for layer in self.layers
        ]
        header = [
            "layer",
            "N x M x k x k",
            "T",
            "energy",
            "rel. error",
            "MACs",
            "MACs after",
            "params",
            "after",
            "note",
        ]
        totals = (
            f"{self.method}{' + least-squares refinement' if self.refined else ''}: "
            f"{human(self.mult_adds_before)} -> {human(self.mult_adds_after)} mult-adds ({self.reduction:.2f}x fewer), "
            f"{human(self.params_before)} -> {human(self.params_after)} params"
        )
        extras = "".join(f"\n{k.replace('_', ' ')}: {_readable(v)}" for k, v in self.extra.items())
        return format_table(header, rows) + "\n" + totals + extras


def skipped_summary(skipped: dict[str, str]) -> str:
    """``{"a": "1x1 (already pointwise)", "b": ...}`` -> ``2 1x1 (already pointwise): a, b``."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in skipped.items():
        by_reason.setdefault(reason, []).append(name)
    parts = []
    for reason, names in by_reason.items():
        shown = ", ".join(names[:3]) + (f", ... {len(names) - 3} more" if len(names) > 3 else "")
        parts.append(f"{len(names)} {reason}: {shown}")
    return "; ".join(parts)


def _readable(value: Any) -> str:
    """A report extra as a person reads it: ``{"top1": 0.8855}`` -> ``top-1 88.55%``."""
    if not isinstance(value, dict):
        return str(value)
    parts = []
    for key, v in value.items():
        if key in ("top1", "top5"):
            parts.append(f"top-{key[-1]} {100 * v:.2f}%")
        elif key == "tried":  # the latency search's steps
            steps = ", ".join(f"{100 * fraction:.0f}% -> {speed:.2f}x" for fraction, speed in v)
            parts.append(f"searched (layer time cut -> network speedup) {steps}")
        elif key == "target_met":
            parts.append("target met" if v else "TARGET MISSED")
        elif key == "target":
            parts.append(f"target {v:g}x")
        elif key.endswith("_ms"):
            parts.append(f"{key[: -len('_ms')].replace('_', ' ')} {v:.2f} ms")
        else:
            parts.append(f"{key.replace('_', ' ')} {v}")
    return ", ".join(parts)


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
def _forward_hooks(model: nn.Module, names: list[str], hook: Callable[..., None]):
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
def _capture(
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

    with _forward_hooks(model, names, hook):
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
    """:func:`_capture` on the first input, a foreign model's failure to run on it told as one line."""
    try:
        return _capture(model, names, x, keep_inputs=True)
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


def _over_calls(shape: dict[str, Any], cost: Callable[[tuple, tuple], int]) -> int:
    """A layer's cost summed over every call of it in the forward pass."""
    return sum(cost(in_hw, out_hw) for in_hw, out_hw in shape["calls"])


def _conv_mult_adds(conv: nn.Conv2d, out_hw) -> int:
    n, m_per_group, kh, kw = conv.weight.shape
    return kh * kw * m_per_group * n * out_hw[0] * out_hw[1]


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` where ``name`` is, and wherever else the same conv is registered
    (a conv shared under two names must stay one conv)."""
    target = model.get_submodule(name)
    aliases = [alias for alias, m in model.named_modules(remove_duplicate=False) if m is target]
    for alias in aliases:
        parent_name, _, child = alias.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


class _Layer:
    """What rank selection needs to know about one eligible conv."""

    def __init__(self, name: str, conv: nn.Conv2d, shapes: dict[str, Any], order: str):
        self.name, self.conv, self.order = name, conv, order
        self.shapes = shapes
        self.in_hw, self.out_hw = shapes["in_hw"], shapes["out_hw"]
        self.original_cost = _over_calls(shapes, lambda i, o: _conv_mult_adds(conv, o))
        self.max_rank = max_rank(conv, order)
        sigma2 = singular_values(conv.weight, order) ** 2
        cumulative = sigma2.sum(0).cumsum(0)  # energy kept by the top-T terms of every channel
        self.retained = (cumulative / cumulative[-1].clamp(min=1e-300)).tolist()

    def cost(self, rank: int) -> int:
        return _over_calls(self.shapes, lambda i, o: decoupled_mult_adds(self.conv, rank, self.order, i, o))

    def cheaper_ranks(self) -> list[int]:
        """Ranks whose decoupling costs less than the original conv, ascending."""
        return [t for t in range(1, self.max_rank + 1) if self.cost(t) < self.original_cost]


def _greedy(
    layers: list[_Layer],
    saving_needed: float,
    cost: Callable[[_Layer, int | None], float],
    loss: Callable[[_Layer, int], float] | None = None,
    progress: Callable[[_Layer, int | None], float] | None = None,
    unit: str = "mult-adds",
) -> dict[str, int]:
    """Lower ranks one step at a time, always where the least is lost per unit of cost
    saved, until the saving is reached.  ``None`` stands for the original conv; what
    a rank loses is ``loss(layer, t)`` (default: the squared singular values dropped);
    the saving is counted in ``progress`` (default: ``cost``), e.g. steps chosen per
    mult-add until enough milliseconds are saved."""
    if loss is None:
        loss = lambda layer, t: 1.0 - layer.retained[t - 1]  # noqa: E731
    progress = progress or cost
    chosen: dict[str, int | None] = {layer.name: None for layer in layers}
    ladders = {layer.name: layer.cheaper_ranks() for layer in layers}
    saved = 0.0
    enough = saving_needed * (1 - 1e-9)  # a saving met up to float rounding is met
    while saved < enough:
        best = None
        for layer in layers:
            current, ladder = chosen[layer.name], ladders[layer.name]
            below = ladder if current is None else ladder[: ladder.index(current)]
            # the highest lower rank that is actually cheaper: measured latency need not
            # fall with every term removed, so a step may skip ranks
            nxt = next((t for t in reversed(below) if cost(layer, t) < cost(layer, current)), None)
            if nxt is None:
                continue
            lost = loss(layer, nxt) - (0.0 if current is None else loss(layer, current))
            gain = cost(layer, current) - cost(layer, nxt)
            ratio = max(lost, 0.0) / gain
            if best is None or ratio < best[0]:
                best = (ratio, layer, current, nxt)
        if best is None:
            break
        _, layer, current, nxt = best
        chosen[layer.name] = nxt
        saved += progress(layer, current) - progress(layer, nxt)
    if saved < enough:
        raise _unreachable(saved, saving_needed, unit)
    return {name: rank for name, rank in chosen.items() if rank is not None}


ALLOCATIONS = ("greedy", "uniform", "loss")  # how ranks are chosen under a target
_SENSITIVITY_BATCHES = 4  # calibration batches (of up to 32 images) each rank's effect is measured on


def _least_damaging(
    model: nn.Module,
    layers: list[_Layer],
    batches: list[Tensor],
    needed: float,
    cost: Callable[[_Layer, int | None], float],
    mult_adds: Callable[[_Layer, int | None], float],
    budget: str,
    order: str,
) -> tuple[dict[str, int], str]:
    """allocation="loss": the ranks, among allocations that all save ``needed`` of the
    budget, whose converted and refitted network stays closest to the original's output
    on the calibration images.  Candidates: greedy by each rank's measured damage
    (:func:`_sensitivity`), greedy by energy, and for a latency budget the plain
    mult-adds allocation taken as far as the same latency - so the choice is never
    worse on those images than the allocations it replaces."""
    probe = batches[:_SENSITIVITY_BATCHES]
    measured = _sensitivity(model, layers, probe)
    unit = "ms" if budget == "latency" else "mult-adds"
    candidates = {
        "measured damage per unit saved": _greedy(
            layers, needed, cost, lambda layer, t: measured[(layer.name, t)], unit=unit
        ),
        "energy per unit saved": _greedy(layers, needed, cost, unit=unit),
    }
    if budget == "latency":
        candidates["energy per mult-add, to the same latency"] = _greedy(
            layers, needed, mult_adds, progress=cost, unit=unit
        )
    references = [model(x) for x in probe]
    scores = {}
    for label, ranks in candidates.items():
        converted = _decoupled_copy(model, ranks, order)
        if order == "dw_pw":
            refit(model, converted, list(ranks), batches)
        with torch.no_grad():
            scores[label] = sum(_output_loss(r, converted(x)) for r, x in zip(references, probe)) / len(probe)
    best = min(scores, key=scores.get)
    others = ", ".join(f"{label} {score:.3g}" for label, score in scores.items() if label != best)
    return candidates[best], f"{best} (output loss {scores[best]:.3g}; {others})"


def _decoupled_copy(model: nn.Module, ranks: dict[str, int], order: str) -> nn.Module:
    """A copy of ``model`` with each named conv decoupled at its rank (no refit): what an
    allocation is scored or timed on before the chosen one is built for real."""
    converted = copy.deepcopy(model)
    for name, t in ranks.items():
        _replace(converted, name, DecoupledConv.from_conv(model.get_submodule(name), t, order))
    return converted


def _unreachable(
    saved: float, needed: float, unit: str = "mult-adds", convertible: Sequence[str] | None = None
) -> ConfigError:
    which = "the regular k x k convolutions"
    if convertible is not None:
        shown = ", ".join(convertible[:4]) + (f" and {len(convertible) - 4} more" if len(convertible) > 4 else "")
        which = f"the {len(convertible)} regular k x k convolution{'s' * (len(convertible) != 1)} ({shown})"
    return ConfigError(
        f"the target cannot be met: at most {saved:.4g} of the {needed:.4g} {unit} needed can be saved by "
        f"converting {which}; depthwise and 1x1 convolutions, and layers that are not convolutions, stay as "
        "they are"
    )


def _most_saved(original: dict[str, int], cost: Callable[[str, int], int]) -> int:
    """The mult-adds rank 1 in every layer saves: the most any allocation can (every method's
    cost grows with the rank)."""
    return sum(max(original[n] - cost(n, 1), 0) for n in original)


def _check_reachable(original: dict[str, int], cost: Callable[[str, int], int], needed: float) -> None:
    """Refuse a saving of ``needed`` mult-adds that no allocation can make, naming the layers
    that can be converted."""
    most = _most_saved(original, cost)
    if most < needed:
        raise _unreachable(most, needed, convertible=list(original))


def _highest_rank(cost: Callable[[int], float], limit: float, max_rank: int) -> int | None:
    """The highest rank in 1..max_rank whose cost is at most ``limit`` (None if rank 1 is over it),
    by bisection: costs grow with the rank, and CP's ranks run to N x M (262,144 for a 512x512 conv)."""
    if cost(1) > limit:
        return None
    low, high = 1, max_rank
    while low < high:
        middle = (low + high + 1) // 2
        if cost(middle) <= limit:
            low = middle
        else:
            high = middle - 1
    return low


def _uniform_ranks(
    original: dict[str, int], saving: float, cost: Callable[[str, int], int], max_ranks: dict[str, int]
) -> dict[str, int]:
    """Every layer cut to the same fraction of its mult-adds (the highest rank that fits), so
    that ``saving`` mult-adds go in all.  A layer with no rank that cheap (a stem conv reading
    3 channels, say) is kept whole and the others are cut further to make up for it."""
    kept: set[str] = set()
    while len(kept) < len(original):
        pool = [n for n in original if n not in kept]
        fraction = 1 - saving / sum(original[n] for n in pool)
        ranks = {}
        for n in pool:
            rank = _highest_rank(lambda t, n=n: cost(n, t), fraction * original[n], max_ranks[n])
            if rank is None:
                kept.add(n)
            else:
                ranks[n] = rank
        if len(ranks) == len(pool):
            return ranks
    raise _unreachable(_most_saved(original, cost), saving)


@torch.no_grad()
def _measure(module: nn.Module, shape: tuple[int, ...], backend: str, runs: int = 9) -> float:
    """Batch-1 latency (ms) of one layer on the backend the model will run on."""
    module = module.eval().cpu()
    x = torch.randn(1, *shape)
    if backend == "channels_last":
        module = module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        return median_ms(lambda: module(x), runs=runs, warmup=2)
    import tempfile

    from ..export.ort import ort_session

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/layer.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), path, input_names=["x"], opset_version=17, dynamo=False)
        session = ort_session(path, torch.get_num_threads())
        feed = {"x": x.numpy()}
        return median_ms(lambda: session.run(None, feed), runs=runs, warmup=2)


# Layer timings by (backend, threads, input shape, layer structure): a layer's time does not
# depend on its weights, so sweeps and repeated conversions measure each shape once per process
# (which also keeps their allocations consistent with one another).
_MEASURED: dict[tuple, float] = {}


def _structure(module: nn.Module) -> tuple:
    return tuple(
        (type(m).__name__, tuple(m.weight.shape), m.stride, m.padding, m.dilation, m.groups, m.bias is not None)
        for m in module.modules()
        if isinstance(m, nn.Conv2d)
    )


def _measure_once(module: nn.Module, shape: tuple[int, ...], backend: str) -> float:
    key = (backend, torch.get_num_threads(), tuple(shape), _structure(module))
    if key not in _MEASURED:
        _MEASURED[key] = _measure(module, shape, backend)
    return _MEASURED[key]


def _latency_table(layers: list[_Layer], backend) -> dict[tuple[str, int | None], float]:
    """Per-layer batch-1 latency (ms) of the original conv and every cheaper rank, on ``backend``
    (a name, or a function ``(module, (C, H, W)) -> ms``); a conv run n times counts n times."""
    measure = backend if callable(backend) else functools.partial(_measure_once, backend=backend)
    table = {}
    for layer in layers:
        shape, calls = (layer.conv.in_channels, *layer.in_hw), len(layer.shapes["calls"])
        table[(layer.name, None)] = calls * measure(copy.deepcopy(layer.conv), shape)
        for rank in layer.cheaper_ranks():
            table[(layer.name, rank)] = calls * measure(DecoupledConv.from_conv(layer.conv, rank, layer.order), shape)
    return table


# A latency target is met on the whole network, searched over the summed layer-time saving:
# steps of bisection (each one conversion and one whole-network timing, no refit), and how far
# above the target the network may land before a smaller saving is tried.
_NETWORK_STEPS, _NETWORK_TOLERANCE = 6, 0.05


def _network_ms(model: nn.Module, size: tuple[int, int, int], backend) -> float:
    """Batch-1 latency (ms) of the whole network on ``backend`` (an fp32 CPU copy is timed)."""
    net = copy.deepcopy(model).float().cpu().eval()
    return backend(net, size) if callable(backend) else _measure(net, size, backend, runs=15)


def _network_record(search: dict[str, Any], converted: nn.Module, size, backend, target: float) -> dict[str, Any]:
    """The returned network's whole-network latency against the target, as the report keeps it;
    a missed target is also a warning (timings move ~10 % between calls: met within that noise)."""
    after_ms = _network_ms(converted, size, backend)
    speedup = search["before_ms"] / after_ms
    met = speedup >= target * (1 - 2 * _NETWORK_TOLERANCE)
    if not met:
        warnings.warn(f"latency target {target:g}x missed: the returned network runs {speedup:.2f}x faster "
                      f"({search['before_ms']:.2f} -> {after_ms:.2f} ms)", stacklevel=4)  # fmt: skip
    return {
        "before_ms": search["before_ms"],
        "after_ms": after_ms,
        "speedup": round(speedup, 3),
        "target": target,
        "target_met": met,
        "tried": search["tried"],  # (fraction of the summed layer times saved, network speedup)
    }


def _network_saving(
    model: nn.Module,
    layers: list[_Layer],
    cost: Callable[[_Layer, int | None], float],
    total_ms: float,
    target: float,
    size: tuple[int, int, int],
    backend,
    order: str,
) -> tuple[float, dict[str, Any]]:
    """The summed layer-time saving (ms) whose allocation makes the WHOLE network ``target``
    times faster on ``backend``, and how it was found.

    Layers timed one at a time do not add up to the network: alone, a layer's weights stay
    in cache and ONNX Runtime reorders its input and output, so cutting the summed layer
    times of a full-width CIFAR VGG-16 by 3x made the network 4.5x faster (ResNet-18: 5.9x),
    losing accuracy nobody asked to lose, while at width 0.25 a "2x" made 1.6x.  So the
    saving is bisected on whole-network timings of the energy-greedy allocation (cheap: no
    refit), keeping the smallest saving that reaches the target.  A network the backend cannot
    time whole (a timer that is a table of layer shapes, a forward ONNX cannot export) keeps
    the summed layer times, with a warning."""
    try:
        base = _network_ms(model, size, backend)
    except Exception as exc:  # whatever the timer or the export raises: the layer sums still stand
        why = f"the whole network could not be timed ({type(exc).__name__}: {exc}); "
        why += "the target is met on the summed layer times"
        warnings.warn(why, stacklevel=4)
        return total_ms * (1 - 1 / target), {"note": why}
    lo, hi, fraction = 0.0, 1.0, 1 - 1 / target  # the summed layer times cut by the target itself
    reached, tried = None, []
    for _ in range(_NETWORK_STEPS):
        try:
            ranks = _greedy(layers, total_ms * fraction, cost, unit="ms")
        except ConfigError:  # more than the layers can save
            hi, fraction = fraction, (lo + fraction) / 2
            continue
        speedup = base / _network_ms(_decoupled_copy(model, ranks, order), size, backend)
        tried.append((round(fraction, 4), round(speedup, 3)))
        if speedup >= target:
            reached, hi = fraction if reached is None else min(reached, fraction), fraction
            if speedup <= target * (1 + _NETWORK_TOLERANCE):
                break
        else:
            lo = fraction
        fraction = (lo + hi) / 2
    how = {"before_ms": base, "tried": tried}
    if reached is None:
        best = max((s for _, s in tried), default=0.0)
        raise ConfigError(
            f"the latency target {target:g}x cannot be met on the whole network: the most measured was {best:.3g}x"
        )
    return total_ms * reached, how


def _output_loss(reference, output) -> float:
    """How far ``output`` is from ``reference``: the KL divergence of the class
    probabilities for (N, classes) logits, else the relative squared error of every tensor."""
    if isinstance(reference, Tensor) and reference.dim() == 2:
        log_p, log_q = reference.double().log_softmax(1), output.double().log_softmax(1)
        return (log_p.exp() * (log_p - log_q)).sum(1).mean().item()
    flat = lambda value: torch.cat([t.double().flatten() for t in _tensors(value)])  # noqa: E731
    ref = flat(reference)
    return ((flat(output) - ref).square().sum() / ref.square().sum().clamp(min=1e-300)).item()


def _tensors(value) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [t for item in value for t in _tensors(item)] if isinstance(value, (list, tuple)) else []


@torch.no_grad()
def _sensitivity(model: nn.Module, layers: list[_Layer], batches: list[Tensor]) -> dict[tuple[str, int], float]:
    """What decoupling ONE layer at each cheaper rank costs the whole network: the output
    loss (see :func:`_output_loss`) on the calibration images with only that layer
    replaced, after its 1x1 conv is refitted to the layer's original output - the
    accuracy a rank choice buys, measured with the refinement the conversion will do."""
    work = copy.deepcopy(model).eval()
    references = [work(x) for x in batches]
    table = {}
    for layer in layers:
        seen = [_capture(work, [layer.name], x, keep_inputs=True, keep_outputs=True)[layer.name] for x in batches]
        original = work.get_submodule(layer.name)
        for rank in layer.cheaper_ranks():
            module = DecoupledConv.from_conv(layer.conv, rank, layer.order)
            if layer.order == "dw_pw":
                pairs = [(module.depthwise(x), y) for entry in seen for x, y in zip(entry["inputs"], entry["outputs"])]
                _fit_pointwise(module.pointwise, pairs)
            _replace(work, layer.name, module)
            table[(layer.name, rank)] = sum(_output_loss(r, work(x)) for r, x in zip(references, batches)) / len(
                batches
            )
            _replace(work, layer.name, original)
    return table


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


def _last_pointwise(module: nn.Module) -> str | None:
    """Path inside ``module`` to the plain 1x1 conv its output comes out of, if any
    ("" for the module itself): the linear map a least-squares refit can solve for."""
    if isinstance(module, nn.Conv2d):
        plain = module.kernel_size == (1, 1) and module.groups == 1 and module.stride == (1, 1)
        return "" if plain and module.padding in ((0, 0), "valid") else None
    if isinstance(module, DecoupledConv):
        return "pointwise" if module.order == "dw_pw" else None
    if isinstance(module, nn.Sequential) and len(module):
        inner = _last_pointwise(module[-1])
        return None if inner is None else ".".join(filter(None, [str(len(module) - 1), inner]))
    return None


@torch.no_grad()
def _fit_pointwise(pointwise: nn.Conv2d, pairs: Iterable[tuple[Tensor, Tensor]], max_rows: int = 4096) -> str:
    """Least-squares weights and bias of a 1x1 conv mapping each input ``x`` to its target
    ``y`` (pixels as samples, at most ``max_rows`` per pair), ridged towards the current
    weights so that weakly determined directions stay where they were.  Returns
    "fitted", "biased" (fitted, and a bias added) or "too few" samples (left as it was)."""
    generator = torch.Generator().manual_seed(0)
    width = pointwise.in_channels + 1
    device = pointwise.weight.device
    gram = torch.zeros(width, width, dtype=torch.float64, device=device)
    cross = torch.zeros(width, pointwise.out_channels, dtype=torch.float64, device=device)
    total_rows = 0
    for x, y in pairs:
        rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).double()
        wanted = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1]).double()
        if rows.shape[0] > max_rows:
            pick = torch.randperm(rows.shape[0], generator=generator)[:max_rows].to(device)
            rows, wanted = rows[pick], wanted[pick]
        rows = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype, device=device)], 1)
        gram += rows.T @ rows
        cross += rows.T @ wanted
        total_rows += rows.shape[0]
    if total_rows < 2 * width:
        return "too few"  # fewer samples than twice the C_in + 1 unknowns per output
    bias = pointwise.bias
    start = torch.cat(
        [
            pointwise.weight.reshape(pointwise.out_channels, -1).T.double(),
            torch.zeros_like(cross[:1]) if bias is None else bias.detach().double()[None, :],
        ]
    )
    strength = 1e-3 * gram.diagonal().mean()
    identity = torch.eye(width, dtype=gram.dtype, device=device)
    solution = torch.linalg.solve(gram + strength * identity, cross + strength * start)
    pointwise.weight.copy_(solution[:-1].T.reshape(pointwise.weight.shape).to(pointwise.weight.dtype))
    if bias is None:
        pointwise.bias = nn.Parameter(solution[-1].to(pointwise.weight.dtype))
        return "biased"
    bias.copy_(solution[-1])
    return "fitted"


@torch.no_grad()
def refit(
    original: nn.Module, converted: nn.Module, names: list[str], batches: list[Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Re-fit the last 1x1 conv (and bias) of each converted layer so that, fed the
    converted network's own features, it reproduces the original layer's output
    (:func:`_fit_pointwise`); layers go in forward order so each absorbs earlier errors.

    ``names`` are the original convs (the same names in both networks).  Returns
    (refitted layers, layers with too few samples, 1x1 convs that gained a bias)."""
    refitted: list[str] = []
    skipped: list[str] = []
    biased: list[str] = []
    for name in names:
        inner = _last_pointwise(converted.get_submodule(name))
        if inner is None:
            continue
        full = ".".join(filter(None, [name, inner]))
        pairs = []
        for images in batches:
            features = _capture(converted, [full], images, keep_inputs=True)[full]["inputs"]
            targets = _capture(original, [name], images, keep_outputs=True)[name]["outputs"]
            pairs += zip(features, targets)  # one pair per call of a reused conv
        outcome = _fit_pointwise(converted.get_submodule(full), pairs)
        if outcome == "too few":
            skipped.append(name)
            continue
        refitted.append(name)
        if outcome == "biased":
            biased.append(full)
    return refitted, skipped, biased


@torch.no_grad()
def _response_moments(model: nn.Module, names: list[str], batches: list[Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """Per conv, the mean and covariance of its bias-free output vectors over every
    pixel of the calibration images (accumulated in float64 as the batches pass)."""
    sums: dict[str, list] = {}

    def hook(module, args, output, name):
        y = output if module.bias is None else output - module.bias[None, :, None, None]
        rows = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1]).double()
        if name not in sums:
            sums[name] = [0, torch.zeros_like(rows[0]), torch.zeros(rows.shape[1], rows.shape[1], dtype=rows.dtype)]
        sums[name][0] += rows.shape[0]
        sums[name][1] += rows.sum(0)
        sums[name][2] += (rows.T @ rows).to(sums[name][2].device)

    with _forward_hooks(model, names, hook):
        for images in batches:
            model(images)
    moments = {}
    for name, (count, total, outer) in sums.items():
        mean = total / count
        moments[name] = (mean, outer.to(mean.device) / count - torch.outer(mean, mean))
    return moments


@torch.no_grad()
def layer_error(original: nn.Module, replacement: nn.Module, x: Tensor) -> float:
    reference = original(x)
    return ((replacement(x) - reference).norm() / reference.norm().clamp(min=1e-12)).item()


def _check_settings(rank, energy, target_reduction, allocation: str, budget: str, latency_backend, calibration) -> None:
    """Refuse settings that cannot work together, before anything is measured."""
    given = [
        k for k, v in {"rank": rank, "energy": energy, "target_reduction": target_reduction}.items() if v is not None
    ]
    if len(given) != 1:
        raise ConfigError(
            "give exactly one of rank=, energy= or target_reduction=",
            cli="give exactly one of --rank, --energy, --target-reduction or --sweep",
        )
    if energy is not None and not 0 < energy <= 1:
        raise ConfigError(f"energy is the fraction of squared singular values to keep, in (0, 1]; got {energy}")
    if target_reduction is not None and target_reduction <= 1:
        raise ConfigError(f"target_reduction is a factor of mult-adds to remove, > 1; got {target_reduction}")
    if rank is not None and rank != "full" and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ConfigError(
            f"rank must be a positive integer or 'full' (every layer exact), got {rank!r}",
            cli=f"--rank must be a positive integer or 'full' (every layer exact), got {rank!r}",
        )
    if allocation not in ALLOCATIONS or budget not in ("mult_adds", "latency"):
        raise ConfigError(
            f"allocation is one of {', '.join(ALLOCATIONS)}; budget is 'mult_adds' or 'latency'",
            cli=f"--allocation is one of {', '.join(ALLOCATIONS)}; --budget is mult_adds or latency",
        )
    if not callable(latency_backend) and latency_backend not in LATENCY_BACKENDS:
        raise ConfigError(f"latency_backend must be one of {', '.join(LATENCY_BACKENDS)}, got {latency_backend!r}")
    if allocation == "loss" and calibration is None:
        raise ConfigError(
            "allocation='loss' measures each rank's effect on calibration images: pass calibration=",
            cli="--allocation loss measures each rank's effect on calibration images: pass --calibration",
        )


def _check_decouple_rank(rank: int, convs: dict[str, nn.Conv2d]) -> None:
    """A decoupling rank is a number of kernel terms: at most k_h x k_w in every layer."""
    for name, conv in convs.items():
        terms = conv.kernel_size[0] * conv.kernel_size[1]
        if rank > terms:
            raise ConfigError(
                f"rank {rank} is larger than the {terms} terms of {name} ({conv.kernel_size[0]}x"
                f"{conv.kernel_size[1]} kernel); rank='full' keeps every layer exact",
                cli=f"--rank {rank} is larger than the {terms} terms of {name} ({conv.kernel_size[0]}x"
                f"{conv.kernel_size[1]} kernel); --rank full keeps every layer exact",
            )


def _names_to_convert(
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


def _decouple_ranks(
    model: nn.Module,
    names: list[str],
    convs: dict[str, nn.Conv2d],
    shapes: dict[str, dict[str, Any]],
    *,
    rank,
    energy,
    target_reduction,
    order: str,
    allocation: str,
    budget: str,
    latency_backend,
    replace_all: bool,
    batches: list[Tensor],
    total_mult_adds: int,
    size: tuple[int, int, int],
) -> tuple[dict[str, int], dict[str, str], dict[str, float], dict[str, Any]]:
    """Each conv's decoupling rank under one of the rules (a rank, an energy, a target by the
    allocation and budget asked for): (ranks, notes, energy retained, report extras)."""
    chosen: dict[str, int] = {}
    report_extra: dict[str, Any] = {}
    notes: dict[str, str] = {}
    info = {n: _Layer(n, convs[n], shapes[n], order) for n in names}
    if rank is not None or energy is not None:
        for n, layer in info.items():
            if rank == "full":
                t = layer.max_rank
            elif rank is not None:
                t = min(rank, layer.max_rank)
            else:
                t = next(i + 1 for i, r in enumerate(layer.retained) if r >= energy - 1e-12)
            if layer.cost(t) >= layer.original_cost and not replace_all:
                notes[n] = f"T={t} would cost more than the conv"
            else:
                chosen[n] = t
    else:
        saving = total_mult_adds * (1 - 1 / target_reduction)
        if allocation == "uniform":
            chosen = _uniform_ranks(
                {n: layer.original_cost for n, layer in info.items()}, saving,
                lambda n, t: info[n].cost(t), {n: layer.max_rank for n, layer in info.items()},
            )  # fmt: skip
        else:
            layer_list = list(info.values())
            mult_adds = lambda layer, t: layer.original_cost if t is None else layer.cost(t)  # noqa: E731
            if budget == "mult_adds":
                cost, needed = mult_adds, saving
            else:
                table = _latency_table(layer_list, latency_backend)
                total_ms = sum(table[(n, None)] for n in names)
                cost = lambda layer, t: table[(layer.name, t)]  # noqa: E731
                needed, network = _network_saving(
                    model, layer_list, cost, total_ms, target_reduction, size, latency_backend, order
                )
            if allocation == "loss":
                chosen, how = _least_damaging(model, layer_list, batches, needed, cost, mult_adds, budget, order)
                report_extra["allocation"] = how
            else:
                chosen = _greedy(layer_list, needed, cost, unit="ms" if budget == "latency" else "mult-adds")
            if budget == "latency":
                # the converted layers' summed batch-1 times, as measured for the allocation
                after_ms = sum(table[(n, chosen.get(n))] for n in names)
                report_extra["layer_latency"] = {"before_ms": total_ms, "after_ms": after_ms}
                report_extra["network_latency"] = network  # completed once the network is built
    retained = {n: info[n].retained[t - 1] for n, t in chosen.items()}
    for n in names:
        if n not in chosen and n not in notes:
            notes[n] = "kept: decoupling it buys the least"
    return chosen, notes, retained, report_extra


def _decomposition_ranks(
    names: list[str],
    convs: dict[str, nn.Conv2d],
    original_cost: dict[str, int],
    new_cost: Callable[[str, int], int],
    layer_max_rank: Callable[[nn.Conv2d], int],
    *,
    rank,
    target_reduction,
    total_mult_adds: int,
    replace_all: bool,
) -> tuple[dict[str, int], dict[str, str]]:
    """Each conv's rank for a decomposition (a fixed rank, or a uniform cut to the target): (ranks, notes)."""
    chosen: dict[str, int] = {}
    notes: dict[str, str] = {}
    uniform: dict[str, int] = {}
    if target_reduction is not None:
        uniform = _uniform_ranks(
            original_cost, total_mult_adds * (1 - 1 / target_reduction), new_cost,
            {n: layer_max_rank(convs[n]) for n in names},
        )  # fmt: skip
    for n in names:
        conv = convs[n]
        original = original_cost[n]
        if rank is not None:
            t = layer_max_rank(conv) if rank == "full" else min(rank, layer_max_rank(conv))
        elif n in uniform:
            t = uniform[n]
        else:
            notes[n] = "kept: no rank of it is cheap enough for the target"
            continue
        if new_cost(n, t) >= original and not replace_all:
            notes[n] = f"rank {t} would cost more than the conv"
        else:
            chosen[n] = t
    return chosen, notes


def _layer_reports(
    names: list[str],
    convs: dict[str, nn.Conv2d],
    shapes: dict[str, dict[str, Any]],
    converted: nn.Module,
    chosen: dict[str, int],
    notes: dict[str, str],
    retained: dict[str, float],
    original_cost: dict[str, int],
    new_cost: Callable[[str, int], int],
) -> list[LayerReport]:
    """One row per conv: its rank, its error against the original on the probe, its cost before and after."""
    reports = []
    for n in names:
        conv, shape = convs[n], shapes[n]
        new = converted.get_submodule(n)
        t = chosen.get(n)
        reports.append(
            LayerReport(
                name=n,
                kernel=tuple(conv.weight.shape),
                out_hw=shape["out_hw"],
                calls=len(shape["calls"]),
                rank=t,
                note=notes.get(n, ""),
                retained_energy=retained.get(n),
                relative_error=layer_error(conv, new, shape["input"]) if t is not None else None,
                mult_adds_before=original_cost[n],
                mult_adds_after=original_cost[n] if t is None else new_cost(n, t),
                params_before=param_count(conv),
                params_after=param_count(new),
            )
        )
    return reports


def _convert(
    model: nn.Module,
    method: ConversionMethod,
    *,
    rank: int | str | None,
    energy: float | None,
    target_reduction: float | None,
    order: str,
    allocation: str,
    budget: str,
    calibration,
    latency_backend: str | Callable[[nn.Module, tuple[int, int, int]], float] = "onnxruntime",
    input_size,
    layers: Iterable[str] | None,
    replace_all: bool,
    seed: int = 0,
) -> tuple[nn.Module, DecoupleReport]:
    _check_settings(rank, energy, target_reduction, allocation, budget, latency_backend, calibration)

    names, skipped = _names_to_convert(model, method, layers)
    size, size_origin = input_size_of(model, input_size)
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    batches = [b.to(device, dtype) for b in calibration_batches(calibration, model, size)]
    if batches:
        probe, size_origin = batches[0][:8], "the calibration images"
    else:
        probe = torch.randn(2, *size, device=device, dtype=dtype)
    shapes = probe_shapes(model, names, probe, size_origin)
    chw = tuple(probe.shape[1:])  # what costs and whole-network times are counted at
    before = profile(model, chw)

    convs = {n: model.get_submodule(n) for n in names}
    # Every cost is summed over the layer's calls: a conv run twice costs twice.
    original_cost = {n: _over_calls(shapes[n], lambda i, o, conv=convs[n]: _conv_mult_adds(conv, o)) for n in names}

    def new_cost(name: str, t: int) -> int:
        return _over_calls(shapes[name], lambda i, o: method.cost(convs[name], t, i, o))

    if target_reduction is not None and budget == "mult_adds":  # rank 1 everywhere saves the most
        _check_reachable(original_cost, new_cost, before.mult_adds * (1 - 1 / target_reduction))
    if method.name == "decouple" and isinstance(rank, int):
        _check_decouple_rank(rank, convs)

    retained: dict[str, float] = {}
    report_extra: dict[str, Any] = {}
    if method.name == "decouple":  # ranks by singular-value energy, measured latency or loss
        chosen, notes, retained, report_extra = _decouple_ranks(
            model, names, convs, shapes, rank=rank, energy=energy, target_reduction=target_reduction, order=order,
            allocation=allocation, budget=budget, latency_backend=latency_backend, replace_all=replace_all,
            batches=batches, total_mult_adds=before.mult_adds, size=chw,
        )  # fmt: skip
    else:
        chosen, notes = _decomposition_ranks(
            names, convs, original_cost, new_cost, method.max_rank, rank=rank, target_reduction=target_reduction,
            total_mult_adds=before.mult_adds, replace_all=replace_all,
        )  # fmt: skip
    converted = copy.deepcopy(model)
    moments = _response_moments(model, list(chosen), batches) if method.calibrated and batches else {}
    # CP and Tucker fit each layer iteratively (seconds a layer on VGG-sized convs): say where it is
    for n, t in tqdm(chosen.items(), desc=f"{method.name} layers", unit="layer", leave=False, disable=None):
        _replace(converted, n, method.fit(convs[n], t, moments.get(n), seed))
    refined, refitted = False, []
    if batches and not method.calibrated:
        if method.refits:
            refitted, unrefined, _ = refit(model, converted, [n for n in names if n in chosen], batches)
            for n in unrefined:
                notes[n] = "not refined: too few calibration samples at this resolution"
            refined = True
        else:
            warnings.warn(
                "least-squares refinement is implemented for the dw_pw decoupling only; skipped", stacklevel=3
            )

    after = profile(converted, chw)
    network = report_extra.get("network_latency", {})
    if "before_ms" in network:  # the network as returned, on the timer the target was met on
        report_extra["network_latency"] = _network_record(network, converted, chw, latency_backend, target_reduction)
    reports = _layer_reports(names, convs, shapes, converted, chosen, notes, retained, original_cost, new_cost)
    report = DecoupleReport(
        method.label or method.name, reports, before.mult_adds, after.mult_adds, before.params, after.params, refined
    )
    report.extra.update(report_extra)
    report.skipped = skipped
    if skipped:
        report.extra["skipped"] = skipped_summary(skipped)
    # Recorded with saved weights, so that load_model (registry and torchvision models) or
    # load_weights (any network, given the original) rebuilds the converted layers.
    step = {"method": method.name, "ranks": dict(chosen), **method.recorded(refitted, bool(batches))}
    arch = _with_converted_steps(dict(getattr(model, "arch", None) or {}))
    converted.arch = {**arch, "converted": [*arch.get("converted", []), step]}
    return converted, report


def _with_converted_steps(arch: dict[str, Any]) -> dict[str, Any]:
    """``arch`` with a file's older ``decoupled`` record as a ``converted`` step."""
    if "decoupled" in arch:
        legacy = arch.pop("decoupled")
        arch["converted"] = [*arch.get("converted", []), {"method": "decouple", "order": "dw_pw", **legacy}]
    return arch


def apply_converted_structure(model: nn.Module, steps: list[dict[str, Any]]) -> nn.Module:
    """Swap the recorded convs for untrained layers of the recorded methods and ranks,
    step by step, so that a saved converted model's state dict fits; in place."""
    for step in steps:
        ranks = step.get("ranks", {})  # (a pipeline's "refit" step converts nothing: it adds biases)
        method = conversion_method(step["method"]) if ranks else None
        for name, rank in ranks.items():
            try:
                conv = model.get_submodule(name)
            except AttributeError:
                raise ConfigError(f"the recorded converted layer {name!r} is not in the model") from None
            with torch.no_grad():
                new = method.structure(name, conv, rank, step)
            _replace(model, name, new)
        for name in step.get("biased", ()):  # 1x1 convs a least-squares refit gave a bias
            pointwise = model.get_submodule(name)
            if pointwise.bias is None:
                pointwise.bias = nn.Parameter(torch.zeros_like(pointwise.weight[:, 0, 0, 0]))
    arch = _with_converted_steps(dict(getattr(model, "arch", None) or {}))
    model.arch = {**arch, "converted": [*arch.get("converted", []), *steps]}
    return model


def apply_decoupled_structure(model: nn.Module, decoupled: dict[str, Any]) -> nn.Module:
    """:func:`apply_converted_structure` for files that recorded a ``decoupled`` key."""
    return apply_converted_structure(model, [{"method": "decouple", "order": "dw_pw", **decoupled}])


def decouple(
    model: nn.Module,
    *,
    rank: int | str | None = None,
    energy: float | None = None,
    target_reduction: float | None = None,
    order: str = "dw_pw",
    calibration=None,
    allocation: str = "greedy",
    budget: str = "mult_adds",
    latency_backend: str | Callable[[nn.Module, tuple[int, int, int]], float] = "onnxruntime",
    input_size: tuple[int, int, int] | None = None,
    layers: Iterable[str] | None = None,
    replace_all: bool = False,
) -> tuple[nn.Module, DecoupleReport]:
    """Convert ``model``'s regular convs into sums of depthwise separable convs, without training.

    Say how much to keep with exactly one of:

    * ``rank=T``: T terms per layer (T = k^2 reproduces the network exactly);
      ``rank="full"``: each layer's own k^2 (with ``replace_all=True``, an exact
      copy of a network whose kernels differ in size, e.g. ResNet's 7x7 stem);
    * ``energy=e``: per layer, the fewest terms keeping a fraction e of the
      squared singular values;
    * ``target_reduction=r``: the whole model's mult-adds divided by r, ranks
      allocated greedily where the least energy is lost per mult-add saved
      (``allocation="uniform"``: every layer cut by the same factor;
      ``budget="latency"``: per millisecond saved, measured here on each
      layer at batch 1, the target met on the whole network's measured time
      (isolated layers do not add up to it; ``report.extra["network_latency"]``),
      on ``latency_backend`` - ``"onnxruntime"`` (the
      fast deployed path; needs the [onnx] extra) or ``"channels_last"``
      eager PyTorch, where depthwise convs are slow and little can be saved,
      or your own ``(module, (C, H, W)) -> ms``, e.g. a table measured on a
      phone); ``allocation="loss"``: per unit of mult-adds or milliseconds
      saved, the least measured damage to the network's output on the
      ``calibration`` images (each layer at each rank alone, refitted, against
      the original's logits: KL divergence), so that a latency target does not
      cut the most sensitive layers to one term.

    ``order`` is ``"dw_pw"`` (depthwise then pointwise) or ``"pw_dw"``.
    ``calibration`` (images, a tensor or an iterable of batches; unlabelled)
    re-fits each decoupled layer's 1x1 conv by least squares to the original
    layer's outputs, fed the decoupled network's own features.  Layers where
    decoupling would cost more than the conv are left as they are; grouped and
    1x1 convs are skipped (``replace_all=True`` converts costlier layers too,
    e.g. to check that T = k^2 is exact).  ``layers`` limits the conversion to
    the named convs; ``input_size`` (C, H, W) sets the size costs are counted at.
    Returns ``(new_model, report)``; ``model`` is not modified.
    """
    check_model(model)
    if order not in ORDERS:
        raise ConfigError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    return _convert(
        model,
        decoupling(order),
        rank=rank,
        energy=energy,
        target_reduction=target_reduction,
        order=order,
        allocation=allocation,
        budget=budget,
        calibration=calibration,
        latency_backend=latency_backend,
        input_size=input_size,
        layers=layers,
        replace_all=replace_all,
    )


def decompose_single(
    model: nn.Module,
    method: str = "cp",
    *,
    rank: int | str | None = None,
    target_reduction: float | None = None,
    input_size: tuple[int, int, int] | None = None,
    layers: Iterable[str] | None = None,
    calibration=None,
    seed: int = 0,
    replace_all: bool = False,
) -> tuple[nn.Module, DecoupleReport]:
    """One method of :func:`mobilenets.decouple.decompose` (which also runs pipelines of them):
    ``"cp"``, ``"tucker"``, ``"spatial"``, ``"channel"`` or ``"decouple"``."""
    check_model(model)
    if method == "decouple":
        return decouple(
            model, rank=rank, target_reduction=target_reduction, calibration=calibration, input_size=input_size,
            layers=layers, replace_all=replace_all,
        )  # fmt: skip
    entry = conversion_method(method)
    if calibration is not None and not entry.calibrated:
        raise ConfigError(f"calibration images are used by the channel decomposition only, not {method!r}")
    return _convert(
        model,
        entry,
        rank=rank,
        energy=None,
        target_reduction=target_reduction,
        order="dw_pw",
        allocation="uniform",
        budget="mult_adds",
        calibration=calibration,
        input_size=input_size,
        layers=layers,
        replace_all=replace_all,
        seed=seed,
    )
