"""Memory-efficient inference for inverted-residual networks (MobileNetV2 paper, Section 5).

An inverted residual block maps a thin bottleneck x to a thin bottleneck y through
a wide expanded tensor (t times the channels).  Every operation inside is per
channel except the final 1x1 projection, which is a sum over the expanded
channels.  So the expanded tensor can be computed in ``splits`` pieces along its
channels - expand 1x1, depthwise, then that piece's share of the projection,
added into y - and only x, y and one piece are ever alive: peak memory is set by
the bottlenecks, not by the expansion.  Batch norm is folded first (eval mode).

Blocks with squeeze-and-excite (MobileNetV3) are left as they are: the gate
needs every expanded channel's mean before any piece can be projected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..layers import ConvBNAct, InvertedResidual
from .onnx import fold_batchnorm

__all__ = ["MemoryEfficientInvertedResidual", "memory_efficient"]


def _conv_parts(unit: nn.Sequential) -> tuple[nn.Conv2d, nn.Module | None]:
    """A BN-folded ConvBNAct: its conv and its activation (None for a linear one)."""
    return unit.conv, getattr(unit, "act", None)


class MemoryEfficientInvertedResidual(nn.Module):
    """An :class:`~mobilenets.layers.InvertedResidual` (no SE) evaluated in ``splits`` channel pieces."""

    def __init__(self, block: InvertedResidual, splits: int) -> None:
        super().__init__()
        if block.se is not None:
            raise ConfigError("blocks with squeeze-and-excite cannot be split: the gate needs every channel")
        block, _ = fold_batchnorm(block)
        self.expand, self.expand_act = _conv_parts(block.expand) if block.expand is not None else (None, None)
        self.depthwise, self.depthwise_act = _conv_parts(block.depthwise)
        self.project, self.project_act = _conv_parts(block.project)
        self.use_residual = block.use_residual
        channels = block.expanded_channels
        self.splits = max(1, min(splits, channels))
        bounds = torch.linspace(0, channels, self.splits + 1).round().long().tolist()
        self.pieces = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
        self.in_channels, self.out_channels = block.in_channels, block.out_channels

    def forward(self, x: Tensor) -> Tensor:
        dw, pw = self.depthwise, self.project
        out = None
        for a, b in self.pieces:
            if self.expand is None:
                piece = x[:, a:b]
            else:
                piece = F.conv2d(x, self.expand.weight[a:b], self.expand.bias[a:b])
                piece = self.expand_act(piece) if self.expand_act is not None else piece
            piece = F.conv2d(piece, dw.weight[a:b], dw.bias[a:b], dw.stride, dw.padding, dw.dilation, groups=b - a)
            piece = self.depthwise_act(piece) if self.depthwise_act is not None else piece
            if out is None:
                out = F.conv2d(piece, pw.weight[:, a:b], pw.bias)
            elif not out.is_contiguous():  # e.g. channels_last: no matrix view of it
                out.add_(F.conv2d(piece, pw.weight[:, a:b]))
            else:
                # The 1x1 projection as a batched matrix product accumulated in place:
                # out += W[:, a:b] @ piece, with no piece-sized partial result allocated.
                n, _, h, w = out.shape
                weight = pw.weight[:, a:b, 0, 0].expand(n, -1, -1)
                out.view(n, -1, h * w).baddbmm_(weight, piece.reshape(n, b - a, h * w))
            del piece  # the expanded piece is dropped before the next one is made
        if self.project_act is not None:
            out = self.project_act(out)
        return out + x if self.use_residual else out


@torch.no_grad()
def memory_efficient(model: nn.Module, splits: int = 4) -> nn.Module:
    """An inference copy of ``model`` whose inverted residual blocks compute their
    expanded tensor in ``splits`` channel pieces (MobileNetV2 paper, Section 5).

    Outputs equal the eval-mode model's to float rounding; peak activation memory
    falls towards the bottleneck tensors' size as ``splits`` grows, for a small
    latency cost (more, smaller convolutions).  ``model`` is not modified; the
    copy is for inference only (eval mode, batch norm folded).
    """
    if splits < 1:
        raise ConfigError(f"splits must be at least 1, got {splits}")
    # Outside the blocks too, only what a layer-by-layer schedule needs: BN folded
    # (no separate BN output) and activations applied in place on their conv's output.
    model, _ = fold_batchnorm(model)
    for unit in model.modules():
        if isinstance(unit, ConvBNAct) and hasattr(getattr(unit, "act", None), "inplace"):
            unit.act.inplace = True
    replaced = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, InvertedResidual) and module.se is None:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, MemoryEfficientInvertedResidual(module, splits))
            replaced += 1
    if replaced == 0:
        raise ConfigError(
            "the model has no inverted residual blocks without squeeze-and-excite to split "
            "(memory-efficient inference is for MobileNetV2-style networks)"
        )
    model.requires_grad_(False)
    return model
