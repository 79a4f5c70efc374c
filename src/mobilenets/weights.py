"""Saving and loading weights, including torchvision's published state dicts.

* :func:`save_weights` writes safetensors (with the model's architecture in the
  file's metadata, so :func:`load_model` can rebuild it) or a plain state dict,
  atomically: a crash mid-write never leaves a truncated file behind.
* :func:`load_weights` accepts this library's layout and torchvision's layout for
  ``mobilenet_v2`` / ``mobilenet_v3_*``.  torchvision names layers by position
  (``features.1.conv.0.0.weight``), we name them by role
  (``features.1.depthwise.conv.weight``); both models register the same tensors
  in the same order, so the mapping is derived by building torchvision's model
  on the meta device and pairing the two key lists, with every pair's shape and
  tensor kind checked.
* Nothing here unpickles arbitrary objects: ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import WeightsError

__all__ = [
    "load_model",
    "load_model_with_info",
    "load_state_dict_file",
    "load_weights",
    "read_weights_file",
    "save_weights",
    "torchvision_key_map",
]

_FORMAT = "mobilenets"


def atomic_write(path: str | Path, write: Any) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(model: nn.Module, path: str | Path, *, data_info: Mapping[str, Any] | None = None) -> Path:
    """Save ``model``'s state dict: safetensors for ``.safetensors``, else ``torch.save``.

    The file records the architecture (``model.arch``), so ``load_model(path)``
    needs no other information, and ``data_info`` (class names, transforms,
    resolution) so that prediction preprocesses images as training did.
    """
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    arch = getattr(model, "arch", None) or {}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        # safetensors refuses tensors that share memory; state dicts of these models have none
        metadata = {"format": _FORMAT, "arch": json.dumps(arch), "data": json.dumps(dict(data_info or {}))}
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
    else:
        payload = {"arch": arch, "state_dict": state, "data": dict(data_info or {})}
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def load_state_dict_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a weights file; return ``(state_dict, arch)`` (``arch`` may be empty).

    Accepts safetensors, a bare ``torch.save``'d state dict, and checkpoints that
    wrap one under ``state_dict``, ``ema``, ``model`` or ``model_state``.
    """
    state, arch, _ = read_weights_file(path)
    return state, arch


def read_weights_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    """Like :func:`load_state_dict_file`, plus what the file says about its data:
    ``{"classes": [...], "transforms": "cifar"|"imagenet", "resolution": R}``
    where known (training checkpoints and files saved with ``data_info``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                state = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as exc:  # safetensors raises its own error types
            raise WeightsError(f"{path} is not a readable safetensors file: {exc}") from exc
        arch = json.loads(metadata["arch"]) if "arch" in metadata else {}
        info = json.loads(metadata["data"]) if "data" in metadata else {}
        return state, arch, info
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"{path} could not be read as a PyTorch state dict with weights_only=True ({exc}); "
            "only tensors and plain containers are loaded, never pickled code"
        ) from exc
    arch: dict[str, Any] = {}
    info: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        arch = dict(obj.get("arch") or {}) if isinstance(obj.get("arch"), Mapping) else {}
        if isinstance(obj.get("data"), Mapping):
            info = dict(obj["data"])
        elif isinstance(obj.get("resolved"), Mapping):  # a training checkpoint
            resolved = obj["resolved"]
            info = {
                "classes": resolved["classes"],
                "transforms": resolved["recipe"]["transforms"],
                "resolution": resolved["resolution"],
            }
        # A training checkpoint with an EMA evaluates (and so deploys) the EMA weights.
        for key in ("state_dict", "ema", "model", "model_state", "ema_state"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(obj), arch, info


def _strip_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def torchvision_key_map(model: nn.Module) -> dict[str, str] | None:
    """Map torchvision's state-dict keys to ``model``'s, or None if there is no twin."""
    from .models.registry import get_model_entry

    arch = getattr(model, "arch", None) or {}
    if "name" not in arch:
        return None
    entry = get_model_entry(arch["name"])
    if entry.torchvision_twin is None:
        return None
    with torch.device("meta"):
        twin = entry.torchvision_twin(arch)
    theirs = list(twin.state_dict().items())
    ours = list(model.state_dict().items())
    if len(theirs) != len(ours):
        return None
    mapping = {}
    for (their_key, their_value), (our_key, our_value) in zip(theirs, ours):
        # Pair only tensors of the same kind and shape; any disagreement means the
        # two layouts differ (e.g. a width torchvision rounds differently).
        if their_key.rsplit(".", 1)[-1] != our_key.rsplit(".", 1)[-1] or their_value.shape != our_value.shape:
            return None
        mapping[their_key] = our_key
    return mapping


def _describe_mismatch(model: nn.Module, state: Mapping[str, Tensor]) -> str:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]

    def listing(title: str, items: list[str]) -> str:
        if not items:
            return ""
        shown = ", ".join(items[:8]) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
        return f"\n  {title} ({len(items)}): {shown}"

    hints = []
    classifier = [k for k in misshaped if k.startswith("classifier")]
    if classifier:
        hints.append("the classifier differs: pass num_classes= to match the file")
    if len(misshaped) > len(classifier):
        hints.append("layer widths differ: check width_mult")
    if missing and unexpected:
        hints.append("the file is for a different architecture or layout")
    return (
        listing("missing keys", missing)
        + listing("unexpected keys", unexpected)
        + listing("mis-shaped keys", misshaped)
        + (f"\n  hint: {'; '.join(hints)}" if hints else "")
    )


def load_weights(model: nn.Module, weights: str | Path | Mapping[str, Tensor], *, strict: bool = True) -> nn.Module:
    """Load ``weights`` (path or state dict) into ``model`` in place and return it.

    The layout is detected: this library's keys load directly, torchvision's are
    renamed.  A file that fits neither raises :class:`WeightsError` naming the
    missing, unexpected and mis-shaped keys.
    """
    source = str(weights) if isinstance(weights, (str, Path)) else "state dict"
    if isinstance(weights, (str, Path)):
        state, _ = load_state_dict_file(weights)
    elif isinstance(weights, Mapping):
        state = dict(weights)
    else:
        raise WeightsError(f"weights must be a path or a state dict, got {type(weights).__name__}")
    state = _strip_prefix(state)
    expected = model.state_dict()
    if set(state) != set(expected):
        mapping = torchvision_key_map(model)
        if mapping is not None and set(state) == set(mapping):
            state = {mapping[k]: v for k, v in state.items()}
    if strict:
        shapes_ok = all(k in state and tuple(state[k].shape) == tuple(v.shape) for k, v in expected.items())
        if set(state) != set(expected) or not shapes_ok:
            name = (getattr(model, "arch", None) or {}).get("name", type(model).__name__)
            raise WeightsError(f"weights from {source} do not fit {name}:{_describe_mismatch(model, state)}")
    model.load_state_dict(state, strict=strict)
    return model


def load_model(path: str | Path, **overrides: Any) -> nn.Module:
    """Rebuild a model saved by :func:`save_weights` (or a training checkpoint) from its file alone."""
    return load_model_with_info(path, **overrides)[0]


def load_model_with_info(path: str | Path, **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_model`, reading the file once, plus its data info (see :func:`read_weights_file`)."""
    from .models.registry import create_model

    state, arch, info = read_weights_file(path)
    if "name" not in arch:
        raise WeightsError(f"{path} records no architecture; use create_model(NAME, weights={str(path)!r}) instead")
    arch = {**arch, **overrides}
    name = arch.pop("name")
    decoupled = arch.pop("decoupled", None)
    qat = arch.pop("qat", None)  # a quantization-aware checkpoint (mobilenets.export.qat)
    model = create_model(name, **arch)
    if decoupled:
        from .decouple import apply_decoupled_structure

        apply_decoupled_structure(model, decoupled)
    if qat:
        from .export.qat import apply_qat_structure

        model = apply_qat_structure(model, qat)
    load_weights(model, state)
    model.eval()
    return model, info
