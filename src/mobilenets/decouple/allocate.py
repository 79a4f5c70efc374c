"""Rank allocation: one function per policy (greedy by energy, uniform, least measured damage) and the
checks of what a target can reach."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .layers import DecoupledConv
from .plan import LayerPlan, capture, decoupled_copy, replace_module
from .refit import fit_pointwise, refit
from .timing import NETWORK_STEPS, NETWORK_TOLERANCE, latency_table, network_ms

__all__ = [
    "ALLOCATIONS",
    "check_decouple_rank",
    "check_reachable",
    "decomposition_ranks",
    "decouple_ranks",
    "greedy_ranks",
    "network_saving",
]


def greedy_ranks(
    layers: list[LayerPlan],
    saving_needed: float,
    cost: Callable[[LayerPlan, int | None], float],
    loss: Callable[[LayerPlan, int], float] | None = None,
    progress: Callable[[LayerPlan, int | None], float] | None = None,
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
    layers: list[LayerPlan],
    batches: list[Tensor],
    needed: float,
    cost: Callable[[LayerPlan, int | None], float],
    mult_adds: Callable[[LayerPlan, int | None], float],
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
        "measured damage per unit saved": greedy_ranks(
            layers, needed, cost, lambda layer, t: measured[(layer.name, t)], unit=unit
        ),
        "energy per unit saved": greedy_ranks(layers, needed, cost, unit=unit),
    }
    if budget == "latency":
        candidates["energy per mult-add, to the same latency"] = greedy_ranks(
            layers, needed, mult_adds, progress=cost, unit=unit
        )
    references = [model(x) for x in probe]
    scores = {}
    for label, ranks in candidates.items():
        converted = decoupled_copy(model, ranks, order)
        if order == "dw_pw":
            refit(model, converted, list(ranks), batches)
        with torch.no_grad():
            scores[label] = sum(_output_loss(r, converted(x)) for r, x in zip(references, probe)) / len(probe)
    best = min(scores, key=scores.get)
    others = ", ".join(f"{label} {score:.3g}" for label, score in scores.items() if label != best)
    return candidates[best], f"{best} (output loss {scores[best]:.3g}; {others})"


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


def check_reachable(original: dict[str, int], cost: Callable[[str, int], int], needed: float) -> None:
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
def _sensitivity(model: nn.Module, layers: list[LayerPlan], batches: list[Tensor]) -> dict[tuple[str, int], float]:
    """What decoupling ONE layer at each cheaper rank costs the whole network: the output
    loss (see :func:`_output_loss`) on the calibration images with only that layer
    replaced, after its 1x1 conv is refitted to the layer's original output - the
    accuracy a rank choice buys, measured with the refinement the conversion will do."""
    work = copy.deepcopy(model).eval()
    references = [work(x) for x in batches]
    table = {}
    for layer in layers:
        seen = [capture(work, [layer.name], x, keep_inputs=True, keep_outputs=True)[layer.name] for x in batches]
        original = work.get_submodule(layer.name)
        for rank in layer.cheaper_ranks():
            module = DecoupledConv.from_conv(layer.conv, rank, layer.order)
            if layer.order == "dw_pw":
                pairs = [(module.depthwise(x), y) for entry in seen for x, y in zip(entry["inputs"], entry["outputs"])]
                fit_pointwise(module.pointwise, pairs)
            replace_module(work, layer.name, module)
            table[(layer.name, rank)] = sum(_output_loss(r, work(x)) for r, x in zip(references, batches)) / len(
                batches
            )
            replace_module(work, layer.name, original)
    return table


def check_decouple_rank(rank: int, convs: dict[str, nn.Conv2d]) -> None:
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


def decouple_ranks(
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
    info = {n: LayerPlan(n, convs[n], shapes[n], order) for n in names}
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
                table = latency_table(layer_list, latency_backend)
                total_ms = sum(table[(n, None)] for n in names)
                cost = lambda layer, t: table[(layer.name, t)]  # noqa: E731
                needed, network = network_saving(
                    model, layer_list, cost, total_ms, target_reduction, size, latency_backend, order
                )
            if allocation == "loss":
                chosen, how = _least_damaging(model, layer_list, batches, needed, cost, mult_adds, budget, order)
                report_extra["allocation"] = how
            else:
                chosen = greedy_ranks(layer_list, needed, cost, unit="ms" if budget == "latency" else "mult-adds")
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


def decomposition_ranks(
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


def network_saving(
    model: nn.Module,
    layers: list[LayerPlan],
    cost: Callable[[LayerPlan, int | None], float],
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
        base = network_ms(model, size, backend)
    except Exception as exc:  # whatever the timer or the export raises: the layer sums still stand
        why = f"the whole network could not be timed ({type(exc).__name__}: {exc}); "
        why += "the target is met on the summed layer times"
        warnings.warn(why, stacklevel=4)
        return total_ms * (1 - 1 / target), {"note": why}
    lo, hi, fraction = 0.0, 1.0, 1 - 1 / target  # the summed layer times cut by the target itself
    reached, tried = None, []
    for _ in range(NETWORK_STEPS):
        try:
            ranks = greedy_ranks(layers, total_ms * fraction, cost, unit="ms")
        except ConfigError:  # more than the layers can save
            hi, fraction = fraction, (lo + fraction) / 2
            continue
        speedup = base / network_ms(decoupled_copy(model, ranks, order), size, backend)
        tried.append((round(fraction, 4), round(speedup, 3)))
        if speedup >= target:
            reached, hi = fraction if reached is None else min(reached, fraction), fraction
            if speedup <= target * (1 + NETWORK_TOLERANCE):
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
