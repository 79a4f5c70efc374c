"""Several conversions in a row: e.g. channel, then spatial, then network decoupling.

Guo et al. (2018) reach their largest speedups by stacking methods: a channel
decomposition (k x k conv to fewer channels, then a 1x1 back), a spatial one
(the k x k conv as k x 1 then 1 x k) and decoupling of what is left.  Each
step converts the regular convs the previous one left or produced inside the
chosen layers, so a 3x3 conv can end as depthwise k x 1 and 1 x k filters
feeding 1x1 convs.

The mult-adds budget is shared: with ``target_reduction=r`` and n steps, each
step divides the network's current cost by what is still missing, spread evenly
over the steps left (``(r * now / before) ** (1 / steps_left)``), so a step that
overshoots leaves less to the next.  With calibration images every step sees the
network as converted so far (the channel step's response statistics, the
decoupling's refit), and after each step the last 1x1 conv of every converted
layer is refitted by least squares to the ORIGINAL layer's output, fed the
converted network's features: the errors of all earlier steps and layers are
absorbed as they arise instead of compounding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..cost import profile
from ..errors import ConfigError
from ..validate import check_model
from .convert import decompose_single, decouple
from .methods import method_names
from .plan import calibration_batches, eligible_convs, input_size_of, layer_error, param_count, probe_shapes
from .refit import refit
from .report import DecoupleReport, LayerReport, skipped_summary

__all__ = ["STEPS", "convert_in_steps", "decompose", "parse_steps"]

STEPS = tuple(method_names())  # what a step can be: every conversion method


def parse_steps(method: str | Sequence[str]) -> list[str]:
    """``"channel+spatial+decouple"`` or ``["channel", "spatial", "decouple"]`` -> the steps, checked."""
    steps = method.split("+") if isinstance(method, str) else list(method)
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise ConfigError(
            f"a conversion step must be one of {', '.join(STEPS)}; got {', '.join(map(repr, unknown)) or 'none'}"
        )
    repeated = sorted({s for s in steps if steps.count(s) > 1})
    if repeated:
        raise ConfigError(f"each step can be used once in a pipeline; repeated: {', '.join(repeated)}")
    return steps


def _inside(name: str, roots: Iterable[str]) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


def convert_in_steps(
    model: nn.Module,
    steps: list[str],
    *,
    rank: str | None = None,
    target_reduction: float | None = None,
    calibration=None,
    input_size: tuple[int, int, int] | None = None,
    layers: Iterable[str] | None = None,
    seed: int = 0,
) -> tuple[nn.Module, DecoupleReport]:
    """Apply ``steps`` one after the other (see the module's docstring); one report for all."""
    _check_steering(rank, target_reduction)
    names, skipped = _layers_to_convert(model, steps, layers)
    size, origin = input_size_of(model, input_size)
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    batches = [b.to(device, dtype) for b in calibration_batches(calibration, model, size)]
    if batches:
        size, origin = tuple(batches[0].shape[1:]), "the calibration images"
    probe = batches[0][:8] if batches else torch.randn(2, *size, device=device, dtype=dtype)
    shapes = probe_shapes(model, names, probe, origin)
    before = profile(model, size)

    current = model
    step_reports: list[tuple[str, DecoupleReport]] = []
    for i, step in enumerate(steps):
        todo = [n for n in eligible_convs(current)[0] if _inside(n, names)]
        if not todo:
            continue  # nothing left for this step to convert (e.g. every layer was kept)
        options: dict[str, Any] = {"input_size": size, "layers": todo}
        if rank == "full":
            options.update(rank="full", replace_all=True)
        else:
            now = profile(current, size).mult_adds
            share = (target_reduction * now / before.mult_adds) ** (1 / (len(steps) - i))
            if share <= 1.0001:
                continue  # earlier steps already met the target
            options["target_reduction"] = share
        if batches and step in ("channel", "decouple"):
            options["calibration"] = batches
        try:
            if step == "decouple":
                current, report = decouple(current, **options)
            else:
                current, report = decompose_single(current, step, seed=seed, **options)
        except ConfigError as error:
            raise ConfigError(f"step {i + 1} ({step}): {error}", cli=f"step {i + 1} ({step}): {error}") from None
        step_reports.append((step, report))
        if batches:
            _, _, gained = refit(model, current, names, batches)
            if gained:  # recorded as its own step, so that loading rebuilds the biases the refit added
                steps_so_far = [*current.arch["converted"], {"method": "refit", "biased": gained}]
                current.arch = {**current.arch, "converted": steps_so_far}

    if not step_reports:
        raise ConfigError("no step converted anything")
    return current, _report(model, current, steps, names, shapes, step_reports, before, size, skipped, bool(batches))


def _check_steering(rank: str | None, target_reduction: float | None) -> None:
    """A pipeline is steered by a mult-adds target or run exact (rank 'full'), never by one rank for all steps."""
    if (rank is None) == (target_reduction is None):
        raise ConfigError(
            "a pipeline is steered by target_reduction= (or rank='full': every step exact)",
            cli="a pipeline (--method a+b) is steered by --target-reduction (or --rank full: every step exact)",
        )
    if rank is not None and rank != "full":
        raise ConfigError(
            f"a pipeline's steps rank differently: give target_reduction= or rank='full', not rank={rank!r}",
            cli=f"a pipeline's steps rank differently: give --target-reduction or --rank full, not --rank {rank}",
        )
    if target_reduction is not None and target_reduction <= 1:
        raise ConfigError(f"target_reduction is a factor of mult-adds to remove, > 1; got {target_reduction}")


def _layers_to_convert(model: nn.Module, steps: list[str], layers: Iterable[str] | None) -> tuple[list[str], list]:
    """The convs the pipeline converts (all eligible ones, or those of ``layers``) and those it skips."""
    # a step other than decoupling needs zero padding: such layers are skipped by the whole pipeline
    names, skipped = eligible_convs(model, zero_padding_only=any(step != "decouple" for step in steps))
    if layers is not None:
        unknown = set(layers) - set(names)
        if unknown:
            raise ConfigError(f"not eligible regular convs: {', '.join(sorted(unknown))}")
        names = [n for n in names if n in set(layers)]
    if not names:
        raise ConfigError("the model has no regular k x k convolutions to convert")
    return names, skipped


@torch.no_grad()
def _report(
    model: nn.Module,
    converted: nn.Module,
    steps: list[str],
    names: list[str],
    shapes: dict[str, dict[str, Any]],
    step_reports: list[tuple[str, DecoupleReport]],
    before,
    size: tuple[int, int, int],
    skipped: dict[str, str],
    refined: bool,
) -> DecoupleReport:
    """One row per original conv: its cost before and after all steps, and each step's ranks."""
    first = {row.name: row for row in step_reports[0][1].layers}  # the first step sees every chosen conv
    rows = []
    for name in names:
        conv, new = model.get_submodule(name), converted.get_submodule(name)
        cost, ranks = first[name].mult_adds_before, []
        for step, report in step_reports:
            inside = [row for row in report.layers if row.name == name or row.name.startswith(name + ".")]
            cost += sum(row.mult_adds_after - row.mult_adds_before for row in inside)
            changed = [str(row.rank) for row in inside if row.rank is not None]
            if changed:
                ranks.append(f"{step} {','.join(changed)}")
        rows.append(
            LayerReport(
                name=name,
                kernel=tuple(conv.weight.shape),
                out_hw=shapes[name]["out_hw"],
                rank=" > ".join(ranks) or None,
                calls=len(shapes[name]["calls"]),
                note="" if ranks else "kept: no step converted it",
                relative_error=layer_error(conv, new, shapes[name]["input"]) if ranks else None,
                mult_adds_before=first[name].mult_adds_before,
                mult_adds_after=cost,
                params_before=param_count(conv),
                params_after=param_count(new),
            )
        )
    after = profile(converted, size)
    report = DecoupleReport(
        "+".join(steps), rows, before.mult_adds, after.mult_adds, before.params, after.params, refined
    )
    report.skipped = dict(skipped)
    if skipped:
        report.extra["skipped"] = skipped_summary(skipped)
    report.extra["steps"] = ", ".join(
        f"{step} {report.reduction:.2f}x" for step, report in step_reports
    )  # each step's own cut of the network it was given
    return report


def decompose(
    model: nn.Module,
    method: str | Sequence[str] = "cp",
    *,
    rank: int | str | None = None,
    target_reduction: float | None = None,
    input_size: tuple[int, int, int] | None = None,
    layers: Iterable[str] | None = None,
    calibration=None,
    seed: int = 0,
    replace_all: bool = False,
) -> tuple[nn.Module, DecoupleReport]:
    """The baselines: CP (``"cp"``), Tucker-2 (``"tucker"``), spatial (``"spatial"``) or
    channel (``"channel"``) decomposition of every regular conv, at a fixed ``rank``
    or with every layer cut to ``1/target_reduction``-ish of the mult-adds so the
    whole model meets it.  Same report as :func:`decouple`.

    ``calibration`` images let the channel decomposition keep the principal
    directions of each layer's real responses instead of its filters'.

    Several methods in a row - ``["channel", "spatial", "decouple"]`` or
    ``"channel+spatial+decouple"`` - form a pipeline (see
    :mod:`mobilenets.decouple.pipeline`): each step converts the convs the
    previous one left or produced, the ``target_reduction`` is shared across the
    steps, and ``calibration`` images refit every converted layer to the original
    network after each step.  ``"channel+decouple"`` is the paper's combination;
    ``rank="full"`` makes every step exact (a check, not a saving).
    """
    steps = method.split("+") if isinstance(method, str) else list(method)
    if len(steps) > 1:
        check_model(model)
        return convert_in_steps(
            model, parse_steps(steps), rank=rank, target_reduction=target_reduction, calibration=calibration,
            input_size=input_size, layers=layers, seed=seed,
        )  # fmt: skip
    return decompose_single(
        model, steps[0] if steps else method, rank=rank, target_reduction=target_reduction, input_size=input_size,
        layers=layers, calibration=calibration, seed=seed, replace_all=replace_all,
    )  # fmt: skip
