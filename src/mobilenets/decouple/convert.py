"""Whole-network conversion: pick each layer's rank, swap the modules, report what it cost.

``decouple(model, ...)`` and ``decompose(model, method=...)`` copy the model,
replace every eligible regular conv (groups = 1, kernel larger than 1x1) and
return ``(new_model, report)``; the input model is never modified.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..cost import profile
from ..errors import ConfigError
from ..validate import LATENCY_BACKENDS, check_model
from .allocate import ALLOCATIONS, check_decouple_rank, check_reachable, decomposition_ranks, decouple_ranks
from .layers import ORDERS
from .methods import ConversionMethod, conversion_method, decoupling
from .plan import (
    calibration_batches,
    conv_mult_adds,
    input_size_of,
    names_to_convert,
    over_calls,
    probe_shapes,
    replace_module,
)
from .record import with_converted_steps
from .refit import refit, response_moments
from .report import DecoupleReport, layer_reports, skipped_summary
from .timing import network_record

__all__ = ["decompose_single", "decouple"]


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

    names, skipped = names_to_convert(model, method, layers)
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
    original_cost = {n: over_calls(shapes[n], lambda i, o, conv=convs[n]: conv_mult_adds(conv, o)) for n in names}

    def new_cost(name: str, t: int) -> int:
        return over_calls(shapes[name], lambda i, o: method.cost(convs[name], t, i, o))

    if target_reduction is not None and budget == "mult_adds":  # rank 1 everywhere saves the most
        check_reachable(original_cost, new_cost, before.mult_adds * (1 - 1 / target_reduction))
    if method.name == "decouple" and isinstance(rank, int):
        check_decouple_rank(rank, convs)

    retained: dict[str, float] = {}
    report_extra: dict[str, Any] = {}
    if method.name == "decouple":  # ranks by singular-value energy, measured latency or loss
        chosen, notes, retained, report_extra = decouple_ranks(
            model, names, convs, shapes, rank=rank, energy=energy, target_reduction=target_reduction, order=order,
            allocation=allocation, budget=budget, latency_backend=latency_backend, replace_all=replace_all,
            batches=batches, total_mult_adds=before.mult_adds, size=chw,
        )  # fmt: skip
    else:
        chosen, notes = decomposition_ranks(
            names, convs, original_cost, new_cost, method.max_rank, rank=rank, target_reduction=target_reduction,
            total_mult_adds=before.mult_adds, replace_all=replace_all,
        )  # fmt: skip
    converted, refined, refitted = _fit_layers(model, method, names, convs, chosen, notes, batches, seed)

    after = profile(converted, chw)
    network = report_extra.get("network_latency", {})
    if "before_ms" in network:  # the network as returned, on the timer the target was met on
        report_extra["network_latency"] = network_record(network, converted, chw, latency_backend, target_reduction)
    reports = layer_reports(names, convs, shapes, converted, chosen, notes, retained, original_cost, new_cost)
    report = DecoupleReport(
        method.label, reports, before.mult_adds, after.mult_adds, before.params, after.params, refined
    )
    report.extra.update(report_extra)
    report.skipped = skipped
    if skipped:
        report.extra["skipped"] = skipped_summary(skipped)
    # Recorded with saved weights, so that load_model (registry and torchvision models) or
    # load_weights (any network, given the original) rebuilds the converted layers.
    step = {"method": method.name, "ranks": dict(chosen), **method.recorded(refitted, bool(batches))}
    arch = with_converted_steps(dict(getattr(model, "arch", None) or {}))
    converted.arch = {**arch, "converted": [*arch.get("converted", []), step]}
    return converted, report


def _fit_layers(
    model: nn.Module,
    method: ConversionMethod,
    names: list[str],
    convs: dict[str, nn.Module],
    chosen: dict[str, int],
    notes: dict[str, str],
    batches: list[torch.Tensor],
    seed: int,
) -> tuple[nn.Module, bool, list[str]]:
    """A copy of ``model`` with each chosen layer replaced by its fit at its rank, then refined on the
    calibration batches where the method refits: (the copy, whether it was refined, the layers refitted).
    Layers left unrefined for want of samples are noted in ``notes``."""
    converted = copy.deepcopy(model)
    moments = response_moments(model, list(chosen), batches) if method.calibrated and batches else {}
    # CP and Tucker fit each layer iteratively (seconds a layer on VGG-sized convs): say where it is
    for n, t in tqdm(chosen.items(), desc=f"{method.name} layers", unit="layer", leave=False, disable=None):
        replace_module(converted, n, method.fit(convs[n], t, moments.get(n), seed))
    if not batches or method.calibrated:
        return converted, False, []
    if not method.refits:
        # stacklevel 4: the user's call of decouple()/convert(), through _convert and this helper
        warnings.warn("least-squares refinement is implemented for the dw_pw decoupling only; skipped", stacklevel=4)
        return converted, False, []
    refitted, unrefined, _ = refit(model, converted, [n for n in names if n in chosen], batches)
    for n in unrefined:
        notes[n] = "not refined: too few calibration samples at this resolution"
    return converted, True, refitted


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
