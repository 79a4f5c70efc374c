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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .datainfo import DataInfo
from .errors import WeightsError
from .files import atomic_write
from .validate import check_model

__all__ = [
    "apply_rebuild_steps",
    "load_pretrained",
    "load_state_dict_file",
    "load_weights",
    "read_weights_file",
    "save_weights",
    "torchvision_key_map",
]

_FORMAT = "mobilenets"


def save_weights(model: nn.Module, path: str | Path, *, data_info: Mapping[str, Any] | None = None) -> Path:
    """Save ``model``'s state dict: safetensors for ``.safetensors``, else ``torch.save``.

    The file records the architecture (``model.arch``), so ``load_model(path)``
    needs no other information, and ``data_info`` (class names, transforms,
    resolution) so that prediction preprocesses images as training did.
    """
    check_model(model)
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    arch = getattr(model, "arch", None) or {}
    data_record = DataInfo.from_record(data_info).to_record()
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        # safetensors refuses tensors that share memory; state dicts of these models have none
        metadata = {"format": _FORMAT, "arch": json.dumps(arch), "data": json.dumps(data_record)}
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
    else:
        payload = {"arch": arch, "state_dict": state, "data": data_record}
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def load_state_dict_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a weights file; return ``(state_dict, arch)`` (``arch`` may be empty).

    Accepts safetensors, a bare ``torch.save``'d state dict, and checkpoints that
    wrap one under ``state_dict``, ``ema``, ``model`` or ``model_state``.
    """
    state, arch, _ = read_weights_file(path)
    return state, arch


def read_weights_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any], DataInfo]:
    """Like :func:`load_state_dict_file`, plus what the file says about its data (a
    :class:`~mobilenets.datainfo.DataInfo`: classes, preprocessing, resolution where known -
    training checkpoints and files saved with ``data_info``)."""
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"{path} is a folder, not a weights file")
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
        info = DataInfo.from_record(json.loads(metadata["data"]) if "data" in metadata else {}, source=str(path))
        return state, arch, info
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path} {_unreadable(path, exc)}") from exc
    arch: dict[str, Any] = {}
    info = DataInfo()
    if isinstance(obj, Mapping):
        arch = dict(obj.get("arch") or {}) if isinstance(obj.get("arch"), Mapping) else {}
        if isinstance(obj.get("data"), Mapping):
            info = DataInfo.from_record(obj["data"], source=str(path))
        elif isinstance(obj.get("resolved"), Mapping):  # a training checkpoint
            info = DataInfo.from_checkpoint(obj["resolved"])
        # A training checkpoint with an EMA evaluates (and so deploys) the EMA weights.
        for key in ("state_dict", "ema", "model", "model_state", "ema_state"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(obj), arch, info


_MAGIC = {b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"GIF8": "a GIF image", b"%PDF": "a PDF"}


def _unreadable(path: Path, exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused ``path``, without torch's advice
    to unpickle it anyway (which would run whatever code the file holds)."""
    if "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
        return (
            "holds pickled Python objects (e.g. a whole model saved with torch.save(model)), which are never "
            "loaded because unpickling can run code; save model.state_dict() or use mobilenets.save_weights"
        )
    head = path.read_bytes()[:8]
    kind = next((k for magic, k in _MAGIC.items() if head.startswith(magic)), None)
    if path.suffix == ".onnx":
        kind = "an ONNX model, which 'mobilenets predict --onnx' runs"
    what = f" (it looks like {kind})" if kind else ""
    return f"is not a weights file: neither a PyTorch state dict nor safetensors{what}"


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
    """Map torchvision's state-dict keys to ``model``'s, or None if there is no twin
    (``model.torchvision_twin``, which the registry sets from the model's entry, builds it)."""
    arch = getattr(model, "arch", None) or {}
    build_twin = getattr(model, "torchvision_twin", None)
    if "name" not in arch or build_twin is None:
        return None
    with torch.device("meta"):
        twin = build_twin(arch)
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


def _describe_mismatch(model: nn.Module, state: Mapping[str, Tensor], file_arch: Mapping[str, Any]) -> tuple[str, str]:
    """The missing, unexpected and mis-shaped keys with a hint: the Python message lists
    them on indented lines, the command line's is one line with counts and an example."""
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

    arch = getattr(model, "arch", None) or {}
    saved = {k: file_arch[k] for k in ("name", "width_mult", "num_classes") if k in file_arch}
    hints: list[tuple[str, str]] = []  # (Python, CLI)
    if saved.get("name") and arch.get("name") and saved["name"] != arch["name"]:
        hints.append((f"this file is {saved['name']}, not {arch['name']}",) * 2)
    classifier = [k for k in misshaped if k.startswith(("classifier", "head.classification_head"))]
    if classifier and any(k.startswith("head.") for k in classifier):  # a detector's class predictions
        ours = f"{arch['num_classes']} " if "num_classes" in arch else ""
        theirs = f" ({saved['num_classes']} in the file)" if "num_classes" in saved else ""
        hints.append((
            f"the class predictions differ: the model has {ours}classes with the background{theirs}; pass num_classes=",
            f"the class predictions differ: the model has {ours}classes with the background{theirs}; "
            "pass --num-classes",
        ))  # fmt: skip
    elif classifier:
        count = f" ({saved['num_classes']} in the file)" if "num_classes" in saved else ""
        hints.append(
            (f"the classifier differs: pass num_classes={count}", f"the classifier differs: pass --num-classes{count}")
        )
    if len(misshaped) > len(classifier):
        width = f" (the file was saved at {saved['width_mult']})" if "width_mult" in saved else ""
        hints.append(
            (f"layer widths differ: check width_mult{width}", f"layer widths differ: check --width-mult{width}")
        )
    body = getattr(getattr(model, "backbone", None), "body", None)
    detector_keys = ("backbone.", "head.")
    if body is not None and missing and unexpected and all(k.startswith(detector_keys) for k in missing) \
            and not any(k.startswith(detector_keys) for k in unexpected):  # fmt: skip
        hints.append((
            "this is a classifier's file, which starts a detector's backbone: load_weights(model.backbone.body, path)",
            "this is a classifier's file, which starts a detector's backbone: mobilenets train --init-from FILE",
        ))  # fmt: skip
    if missing and unexpected and not hints:
        hints.append(("the file is for a different architecture or layout",) * 2)
    keys = (
        listing("missing keys", missing)
        + listing("unexpected keys", unexpected)
        + listing("mis-shaped keys", misshaped)
    )
    detail = keys + (f"\n  hint: {'; '.join(h[0] for h in hints)}" if hints else "")
    # The command line gets one line: the counts, one example, the hint.
    groups = (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
    counts = ", ".join(f"{len(items)} {title}" for title, items in groups if items)
    example = (misshaped or missing or unexpected or ["?"])[0]
    summary = f" {counts} keys (e.g. {example})" + (f"; hint: {'; '.join(h[1] for h in hints)}" if hints else "")
    return detail, summary


# Steps that turn what a registry builder makes into what was saved: decoupled or
# decomposed layers, quantization-aware wrappers.  The packages that make such
# models register their step under the ``arch`` key they record, as an entry point
# of this group (see pyproject.toml), so this module imports none of them.
REBUILD_STEPS_GROUP = "mobilenets.rebuild_steps"


def rebuild_steps() -> dict[str, Callable[[nn.Module, Any], nn.Module]]:
    """``arch`` key -> ``step(model, spec) -> model`` that reshapes a freshly built model."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=REBUILD_STEPS_GROUP)}


def apply_rebuild_steps(model: nn.Module, arch: Mapping[str, Any]) -> nn.Module:
    """Apply the steps ``arch`` names, in the order they were recorded."""
    steps = rebuild_steps()
    for key, spec in arch.items():
        if key in steps:
            model = steps[key].load()(model, spec)
    return model


def load_weights(model: nn.Module, weights: str | Path | Mapping[str, Tensor], *, strict: bool = True) -> nn.Module:
    """Load ``weights`` (path or state dict) into ``model`` in place and return it.

    The layout is detected: this library's keys load directly, torchvision's are
    renamed.  A file saved from a converted model (``mobilenets.decouple`` /
    ``decompose``) first converts ``model``'s layers the same way (untrained), so
    the original network plus the file rebuild the converted one, registry model
    or not.  A file that fits neither raises :class:`WeightsError` naming the
    missing, unexpected and mis-shaped keys.
    """
    return _load(model, weights, strict=strict)[0]


def load_pretrained(
    model: nn.Module, weights: str | Path | Mapping[str, Tensor], *, head: list[str], new_classes: bool = False
) -> tuple[nn.Module, list[str], list[str]]:
    """Start ``model`` from pretrained ``weights`` for fine-tuning.

    Like :func:`load_weights`, except that the tensors named in ``head`` (the
    classifier) may differ in shape, as when 1000 ImageNet classes become your 10:
    those keep ``model``'s fresh initialisation, as they do whatever their shape with
    ``new_classes`` (as many classes as the file's, but other ones).  Any other mismatch
    is an error naming the keys.  Returns ``(model, loaded keys, re-initialised keys)``.
    """
    model, reinitialised = _load(model, weights, strict=True, new_head=set(head), replace_head=new_classes)
    loaded = [k for k in model.state_dict() if k not in reinitialised]
    return model, loaded, reinitialised


def _load(
    model: nn.Module,
    weights: str | Path | Mapping[str, Tensor],
    *,
    strict: bool,
    new_head: set[str] = frozenset(),
    replace_head: bool = False,
) -> tuple[nn.Module, list[str]]:
    source = str(weights) if isinstance(weights, (str, Path)) else "state dict"
    file_arch: dict[str, Any] = {}
    if isinstance(weights, (str, Path)):
        state, file_arch = load_state_dict_file(weights)
    elif isinstance(weights, Mapping):
        state = dict(weights)
    else:
        raise WeightsError(f"weights must be a path or a state dict, got {type(weights).__name__}")
    state = _strip_prefix(state)
    arch = getattr(model, "arch", None) or {}
    # Conversions only: they change which layers hold the weights, which the file alone says.
    # (A quantization-aware file loaded into a plain model stays an error, not a silent QAT model.)
    if "converted" in file_arch and "converted" not in arch:
        model = apply_rebuild_steps(model, {"converted": file_arch["converted"]})
    expected = model.state_dict()
    adapt = getattr(model, "adapt_state_dict", None)  # a backbone takes a classifier's weights
    if adapt is not None and set(state) != set(expected):
        state = adapt(state)
    if set(state) != set(expected):
        mapping = torchvision_key_map(model)
        if mapping is not None and set(state) == set(mapping):
            state = {mapping[k]: v for k, v in state.items()}
    # a new classifier for another number of classes keeps its fresh initialisation
    skipped = [
        k for k in expected if k in new_head and k in state and (replace_head or state[k].shape != expected[k].shape)
    ]
    state = {k: v for k, v in state.items() if k not in skipped}
    wanted = {k: v for k, v in expected.items() if k not in skipped}
    if strict:
        shapes_ok = all(k in state and tuple(state[k].shape) == tuple(v.shape) for k, v in wanted.items())
        if set(state) != set(wanted) or not shapes_ok:
            name = arch.get("name", type(model).__name__)
            text, cli = _describe_mismatch(model, state, file_arch)
            raise WeightsError(
                f"weights from {source} do not fit {name}:{text}", cli=f"weights from {source} do not fit {name}:{cli}"
            )
    model.load_state_dict(state, strict=strict and not skipped)
    return model, skipped
