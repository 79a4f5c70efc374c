"""Activation memory of inference, measured on the real eager execution.

:func:`trace_live_activations` runs a forward pass under a dispatch mode that
sees every tensor an operator creates and when the last reference to its storage
dies.  The running sum of live activation bytes is exactly what a layer-by-layer
eager schedule must hold (weights and the operators' private scratch space are
not activations and are not counted).  It works for any ``nn.Module`` on any
device, needs no allocator support, and is used both by ``profile`` (the naive
schedule's peak) and by the memory-efficient-inference benchmark.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["LiveActivations", "trace_live_activations"]


@dataclass(frozen=True)
class LiveActivations:
    """Peak and total activation bytes of one forward pass."""

    peak_bytes: int
    allocated_bytes: int  # sum of every activation ever created (the traffic)
    input_bytes: int


class _LiveTensorTracker(TorchDispatchMode):
    def __init__(self, weights: set[int] = frozenset()) -> None:
        super().__init__()
        # storages of parameters and buffers: views of them (a Linear's transposed
        # weight) are created by operators but are not activations
        self._weights = weights
        self.live_bytes = 0
        self.peak_bytes = 0
        self.allocated_bytes = 0
        # storage address -> [bytes, number of live tensor objects viewing it]
        self._storages: dict[int, list[int]] = {}
        self._seen: set[int] = set()  # ids of tensor objects already counted

    def track(self, tensor: Tensor) -> None:
        if id(tensor) in self._seen or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self._weights:
            return
        entry = self._storages.get(key)
        if entry is None:
            entry = self._storages[key] = [storage.nbytes(), 0]
            self.live_bytes += entry[0]
            self.allocated_bytes += entry[0]
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        entry[1] += 1
        self._seen.add(id(tensor))
        weakref.finalize(tensor, self._release, id(tensor), key)

    def _release(self, tensor_id: int, key: int) -> None:
        self._seen.discard(tensor_id)
        entry = self._storages.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live_bytes -= entry[0]
            del self._storages[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, Tensor):
                self.track(item)
        return out


@torch.no_grad()
def trace_live_activations(model: nn.Module, example: Tensor) -> LiveActivations:
    """Peak bytes of live activations while ``model(example)`` runs eagerly.

    The input counts as live for the whole pass (the caller holds it).  Run the
    model in eval mode first if you want inference behaviour; this function does
    not change the mode.
    """
    weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    tracker = _LiveTensorTracker(weights)
    with tracker:
        tracker.track(example)
        output = model(example)
        del output
    return LiveActivations(tracker.peak_bytes, tracker.allocated_bytes, example.untyped_storage().nbytes())
