"""Mult-adds, parameters and activation memory, per layer and per model.

Conventions are the papers':

* a **mult-add** is one multiply-accumulate of a convolution or fully connected
  layer: ``H_out * W_out * C_out * (C_in / groups) * k_h * k_w`` for a conv,
  ``in_features * out_features`` for a linear layer.  Batch norm, activations,
  pooling, the squeeze-excite rescale and residual additions are not counted.
* **parameters** are every learnable tensor, batch-norm scale and shift included
  (running statistics are buffers, not parameters).  A batch norm's parameters
  are shown on the row of the conv that feeds it, because the papers' tables
  treat "conv + BN + ReLU" as one layer.
* **activations** are counted in elements; the memory figures multiply by
  ``bytes_per_element`` (2 for the V2 paper's 16-bit convention).

The profile runs one real forward pass of a batch of one with hooks on the leaf
modules, so it works for any ``nn.Module``: ours, torchvision's, converted ones.
"""

from __future__ import annotations

import functools
import json
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..validate import check_model
from .memory import trace_live_activations

__all__ = ["LayerCost", "Profile", "layer_kind", "profile"]

# Layer kinds, in the order V1's Table 2 lists them.
KIND_POINTWISE = "1x1 conv"
KIND_DEPTHWISE = "depthwise conv"
KIND_FULL = "full conv"
KIND_GROUPED = "grouped conv"
KIND_FC = "fully connected"
KIND_NORM = "norm"
KIND_OTHER = "other"
KIND_ORDER = [KIND_POINTWISE, KIND_DEPTHWISE, KIND_FULL, KIND_GROUPED, KIND_FC, KIND_NORM, KIND_OTHER]


KIND_TRANSPOSED = "transposed conv"
KIND_ATTENTION = "attention"
KIND_ORDER[KIND_ORDER.index(KIND_FC) : KIND_ORDER.index(KIND_FC)] = [KIND_TRANSPOSED]
KIND_ORDER[KIND_ORDER.index(KIND_NORM) : KIND_ORDER.index(KIND_NORM)] = [KIND_ATTENTION]
_WEIGHTED_KINDS = (KIND_POINTWISE, KIND_DEPTHWISE, KIND_FULL, KIND_GROUPED, KIND_TRANSPOSED, KIND_FC)

# Modules whose cost is counted, or is none by the papers' convention (norms, lookups,
# element-wise ops).  A module outside these that holds weights is listed as uncounted.
_NO_MULT_ADDS = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.PReLU,
)


def layer_kind(module: nn.Module) -> str:
    """Classify a module the way V1's Table 2 does."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return KIND_TRANSPOSED
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.groups == 1:
            return KIND_POINTWISE if all(k == 1 for k in module.kernel_size) else KIND_FULL
        if module.groups == module.in_channels:
            return KIND_DEPTHWISE
        return KIND_GROUPED
    if isinstance(module, nn.Linear):
        return KIND_FC
    if isinstance(module, nn.MultiheadAttention):
        return KIND_ATTENTION
    if isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
        return KIND_NORM
    return KIND_OTHER


def _attention_mult_adds(module: nn.MultiheadAttention, inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Per sample: the q, k, v and output projections plus the two attention products
    (q k^T and the weighted sum of v), each a multiply-accumulate per output element."""
    query = inputs[0] if inputs else kwargs["query"]
    key = inputs[1] if len(inputs) > 1 else kwargs.get("key", query)
    sequence_dim = 1 if module.batch_first else 0
    length = query.shape[sequence_dim] if query.dim() == 3 else query.shape[0]
    source = key.shape[sequence_dim] if key.dim() == 3 else key.shape[0]
    e = module.embed_dim
    projections = length * e * e + source * e * (module.kdim + module.vdim) + length * e * e
    return projections + 2 * length * source * e


def _mult_adds(module: nn.Module, output: Tensor, inputs: tuple[Any, ...] = ()) -> int:
    per_sample = output.numel() // max(1, output.shape[0])
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        # every input element meets (out_channels / groups) x kernel weights
        x = inputs[0]
        return x.numel() // max(1, x.shape[0]) * (module.out_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.modules.conv._ConvNd):
        return per_sample * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return per_sample * module.in_features
    return 0


@dataclass
class LayerCost:
    """One row of a profile: a conv or linear layer (with its norm) or another module with parameters."""

    name: str
    type: str
    kind: str
    output_shape: tuple[int, ...]
    mult_adds: int
    params: int
    activations: int  # output elements of this layer
    weight_params: int = 0  # conv/linear kernel only: what V1's Table 2 shares are taken over


@dataclass
class Profile:
    """Cost of one model at one input size.  ``str(profile)`` renders a table."""

    input_size: tuple[int, int, int]
    mult_adds: int
    params: int
    layers: list[LayerCost]
    input_activations: int
    largest_activation: int  # elements of the largest tensor in layer-by-layer inference
    peak_activation_naive_bytes: int  # live bytes at the peak of eager float32 inference
    largest_activation_blockwise: int  # V2 paper's measure, in elements
    by_resolution: dict[int, int] = field(default_factory=dict)  # side -> largest blockwise tensor
    by_resolution_channels: dict[int, int] = field(default_factory=dict)
    model_name: str = ""
    # Modules that hold weights but whose mult-adds this profile cannot count (custom
    # layers): the total is then a lower bound, and the table says so.
    uncounted: list[str] = field(default_factory=list)

    # ---- derived figures -------------------------------------------------
    def memory_kb(self, elements: int, bytes_per_element: int = 2) -> float:
        """``elements`` as kilobytes (1000 bytes) at ``bytes_per_element``."""
        return elements * bytes_per_element / 1000

    def by_type(self) -> list[dict[str, Any]]:
        """V1's Table 2: share of mult-adds and parameters by layer kind.

        Shares of parameters are taken over conv and fully connected *kernels*
        (no biases, no batch norm), which is the convention that reproduces the
        paper's percentages; absolute counts of every parameter are given too.
        """
        totals: OrderedDict[str, dict[str, int]] = OrderedDict(
            (k, {"mult_adds": 0, "params": 0, "weights": 0}) for k in KIND_ORDER
        )
        for row in self.layers:
            totals[row.kind]["mult_adds"] += row.mult_adds
            totals[row.kind]["params"] += row.params
            totals[row.kind]["weights"] += row.weight_params
        all_weights = sum(t["weights"] for t in totals.values()) or 1
        all_mult_adds = self.mult_adds or 1
        return [
            {
                "kind": kind,
                "mult_adds": t["mult_adds"],
                "mult_adds_share": t["mult_adds"] / all_mult_adds,
                "params": t["params"],
                "weight_share": t["weights"] / all_weights,
            }
            for kind, t in totals.items()
            if t["mult_adds"] or t["params"]
        ]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layers"] = [{**asdict(row), "output_shape": list(row.output_shape)} for row in self.layers]
        data["input_size"] = list(self.input_size)
        data["by_resolution"] = {str(k): v for k, v in self.by_resolution.items()}
        data["by_resolution_channels"] = {str(k): v for k, v in self.by_resolution_channels.items()}
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    # ---- rendering ---------------------------------------------------------
    def table(self, *, layers: bool = True) -> str:
        from .._table import format_table, human

        lines = []
        title = f"{self.model_name or 'model'} @ {self.input_size[0]}x{self.input_size[1]}x{self.input_size[2]}"
        lines.append(title)
        if layers:
            rows = [
                [
                    r.name,
                    r.kind,
                    "x".join(map(str, r.output_shape)),
                    f"{r.mult_adds:,}",
                    f"{r.params:,}",
                    f"{r.activations:,}",
                ]
                for r in self.layers
            ]
            lines.append(
                format_table(
                    ["layer", "kind", "output", "mult-adds", "params", "activations"],
                    rows,
                    align="llrrrr",
                )
            )
        lines.append(
            f"total: {human(self.mult_adds)} mult-adds ({self.mult_adds:,}), "
            f"{human(self.params)} params ({self.params:,})"
        )
        lines.append(
            f"activations: largest tensor {self.largest_activation:,} elements; "
            f"peak live in eager PyTorch (fp32) {self.peak_activation_naive_bytes / 1000:,.0f} KB"
        )
        lines.append(
            f"memory-efficient inference (each inverted-residual block one op, V2 paper sec. 5): "
            f"largest tensor {self.largest_activation_blockwise:,} elements = "
            f"{self.memory_kb(self.largest_activation_blockwise):,.0f} KB at 16 bit"
        )
        if self.uncounted:
            shown = ", ".join(self.uncounted[:6]) + (
                f" and {len(self.uncounted) - 6} more" if len(self.uncounted) > 6 else ""
            )
            lines.append(
                f"WARNING: mult-adds not counted for {len(self.uncounted)} module(s) of unknown cost: {shown}; "
                "the total is a lower bound"
            )
        return "\n".join(lines)

    def by_type_table(self) -> str:
        from .._table import format_table

        rows = [
            [
                r["kind"],
                f"{r['mult_adds']:,}",
                f"{100 * r['mult_adds_share']:.2f}%",
                f"{r['params']:,}",
                f"{100 * r['weight_share']:.2f}%",
            ]
            for r in self.by_type()
        ]
        return format_table(
            ["type", "mult-adds", "share", "params", "share of weights"],
            rows,
            align="lrrrr",
        )

    def __str__(self) -> str:
        return self.table()


def _is_memory_unit(module: nn.Module) -> bool:
    """Blocks whose inner tensors can be computed piecewise (V2 paper, section 5)."""
    if getattr(module, "memory_efficient_unit", False):
        return True
    # torchvision's MobileNetV2/V3 blocks have the same structure.
    return type(module).__name__ == "InvertedResidual" and type(module).__module__.startswith("torchvision")


@dataclass
class _Record:
    name: str
    module: nn.Module
    output: tuple[int, ...]
    unit: str | None  # enclosing memory unit, if any
    is_unit: bool = False


@torch.no_grad()
def _input_shape(model: nn.Module, input_size) -> tuple[int, int, int]:
    """``input_size`` as (C, H, W): given whole, as one side, or the model's own default."""
    if input_size is None:
        input_size = getattr(model, "default_resolution", 224)
    if isinstance(input_size, int) and not isinstance(input_size, bool):  # a side, as the CLI's --resolution
        input_size = (getattr(model, "in_channels", 3), input_size, input_size)
    if (
        not isinstance(input_size, (tuple, list))
        or len(input_size) != 3
        or not all(isinstance(v, int) and v > 0 for v in input_size)
    ):
        raise ConfigError(
            f"input_size must be (channels, height, width) or an image side, got {input_size!r}",
            cli=f"the input size must be positive, got {input_size!r}",
        )
    return tuple(input_size)


class _Counter:
    """Forward hooks that count one pass: a row per layer with mult-adds and parameters (a BN
    folded into the conv before it, as the papers count), and the outputs of every block that
    memory-efficient inference would compute in pieces."""

    def __init__(self, model: nn.Module) -> None:
        self.units = {name for name, m in model.named_modules() if _is_memory_unit(m)}
        self.records: list[_Record] = []
        self.rows: list[LayerCost] = []
        self.counted: set[int] = set()
        self.last_conv: LayerCost | None = None
        self.uncounted: list[str] = []

    def enclosing_unit(self, name: str) -> str | None:
        best = None
        for unit in self.units:
            if name.startswith(unit + ".") and (best is None or len(unit) > len(best)):
                best = unit
        return best

    def own_parameters(self, module: nn.Module, recurse: bool) -> list[Tensor]:
        own = [p for p in module.parameters(recurse=recurse) if id(p) not in self.counted]
        self.counted.update(id(p) for p in own)
        return own

    def leaf(self, name: str, module: nn.Module, inputs: Any, output: Any) -> None:
        if not isinstance(output, Tensor):
            return
        shape = tuple(output.shape[1:])
        self.records.append(_Record(name, module, shape, self.enclosing_unit(name)))
        params = sum(p.numel() for p in self.own_parameters(module, recurse=False))
        kind = layer_kind(module)
        mult_adds = _mult_adds(module, output, inputs)
        label = f"{name} ({type(module).__name__})"
        if (
            kind == KIND_OTHER
            and not isinstance(module, _NO_MULT_ADDS)
            and any(p.dim() >= 2 for p in module.parameters(recurse=False))
            and label not in self.uncounted
        ):
            self.uncounted.append(label)
        if kind == KIND_NORM and self.last_conv is not None and self.last_conv.output_shape == shape:
            self.last_conv.params += params  # conv + BN are one layer in the papers
            self.last_conv = None
            return
        if not (mult_adds or params):
            return
        weight = getattr(module, "weight", None)
        weight_params = weight.numel() if kind in _WEIGHTED_KINDS and weight is not None else 0
        row = LayerCost(name, type(module).__name__, kind, shape, mult_adds, params, output.numel(), weight_params)
        self.rows.append(row)
        self.last_conv = row if isinstance(module, nn.modules.conv._ConvNd) else None

    def attention(self, name: str, module: nn.Module, inputs: Any, kwargs: Any, output: Any) -> None:
        # nn.MultiheadAttention uses its projections' weights directly (its out_proj
        # module never runs), so it is counted as one layer from its inputs.
        out = output[0] if isinstance(output, tuple) else output
        own = self.own_parameters(module, recurse=True)
        mult_adds = _attention_mult_adds(module, inputs, kwargs)
        weights = sum(p.numel() for p in own if p.dim() >= 2)
        batched = out.dim() == 3
        if batched and not module.batch_first:
            out = out.transpose(0, 1)  # (L, N, E) -> (N, L, E)
        shape = tuple(out.shape[1:]) if batched else tuple(out.shape)
        per_sample = out.numel() // (out.shape[0] if batched else 1)
        params = sum(p.numel() for p in own)
        self.rows.append(
            LayerCost(name, type(module).__name__, KIND_ATTENTION, shape, mult_adds, params, per_sample, weights)
        )
        self.last_conv = None

    def unit(self, name: str, module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor):
            self.records.append(_Record(name, module, tuple(output.shape[1:]), self.enclosing_unit(name), is_unit=True))

    def attach(self, model: nn.Module) -> list[Any]:
        """Hook every leaf, every attention module and every memory unit; returns the handles."""
        handles = []
        attention = [name for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
        for name, module in model.named_modules():
            if name in attention:
                hook = functools.partial(self.attention, name)
                handles.append(module.register_forward_hook(hook, with_kwargs=True))
            elif not list(module.children()) and not any(name.startswith(a + ".") for a in attention):
                handles.append(module.register_forward_hook(functools.partial(self.leaf, name)))
            if name in self.units:
                handles.append(module.register_forward_hook(functools.partial(self.unit, name)))
        return handles


def profile(
    model: nn.Module,
    input_size: tuple[int, int, int] | None = None,
    *,
    device: torch.device | str | None = None,
) -> Profile:
    """Count mult-adds, parameters and activations of ``model`` for one image.

    Args:
        model: any ``nn.Module`` taking a (N, C, H, W) batch.
        input_size: ``(C, H, W)``, or one side ``R`` for ``(in_channels, R, R)``;
            defaults to the model's ``default_resolution`` (224 for ImageNet
            variants) with its ``in_channels``.
        device: where to run the counting pass (default: where the model is).
    """
    check_model(model)
    input_size = _input_shape(model, input_size)
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    example = torch.zeros((1, *input_size), device=device)
    counter = _Counter(model)
    handles = counter.attach(model)
    was_training = model.training
    model.eval()
    try:
        model(example)
        for handle in handles:
            handle.remove()
        handles.clear()
        live = trace_live_activations(model, example)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    rows, records = counter.rows, counter.records
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    # Parameters of modules the forward pass never reached still count.
    unreached = params - sum(r.params for r in rows)
    if unreached:
        rows.append(LayerCost("(not executed)", "-", KIND_OTHER, (), 0, unreached, 0))

    largest = max([r.activations for r in rows] + [_numel(rec.output) for rec in records] + [example[0].numel()])
    blockwise = _materialised(records, example)
    by_res: dict[int, int] = {}
    by_res_ch: dict[int, int] = {}
    for shape in blockwise:
        side = shape[-1] if len(shape) == 3 else 1
        by_res[side] = max(by_res.get(side, 0), _numel(shape))
        by_res_ch[side] = max(by_res_ch.get(side, 0), shape[0])
    arch = getattr(model, "arch", {}) or {}
    return Profile(
        input_size=tuple(input_size),
        mult_adds=sum(r.mult_adds for r in rows),
        params=params,
        layers=rows,
        input_activations=example[0].numel(),
        largest_activation=largest,
        peak_activation_naive_bytes=live.peak_bytes,
        largest_activation_blockwise=max(_numel(s) for s in blockwise),
        by_resolution=dict(sorted(by_res.items(), reverse=True)),
        by_resolution_channels=dict(sorted(by_res_ch.items(), reverse=True)),
        model_name=arch.get("name", type(model).__name__),
        uncounted=counter.uncounted,
    )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _materialised(records: list[_Record], example: Tensor) -> list[tuple[int, ...]]:
    """Shapes of the tensors that must exist in full when every inverted-residual
    block runs as one operation whose expanded tensor is computed in pieces.

    A block without an expansion layer (V2's first) starts with a depthwise conv,
    so the conv feeding it can itself serve as the expansion and be computed in
    pieces too: the paper's "trick" for the first layer.  Its output is then not
    materialised either.
    """
    shapes: list[tuple[int, ...]] = [tuple(example.shape[1:])]
    pending: list[tuple[int, ...]] = []  # outputs since the last conv outside any block
    seen_units: set[str] = set()
    for rec in records:
        if rec.is_unit:
            if rec.unit is None:
                shapes.append(rec.output)
            continue
        if rec.unit is not None:
            if rec.unit not in seen_units:
                seen_units.add(rec.unit)
                first_is_depthwise = isinstance(rec.module, nn.Conv2d) and layer_kind(rec.module) == KIND_DEPTHWISE
                if first_is_depthwise and pending:
                    pending = []  # computed piecewise with the block: never materialised
            continue
        if isinstance(rec.module, nn.Conv2d):
            shapes.extend(pending)
            pending = []
        pending.append(rec.output)
    shapes.extend(pending)
    return shapes
