"""The one model registry that the CLI, benchmarks and tests all go through."""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError, UnknownModelError
from ..tasks import get_task
from ..validate import FRACTION, POSITIVE_INT, Rule
from ..weights import WeightsError, apply_rebuild_steps, load_weights, read_weights_file, rebuild_steps
from .features import FeatureExtractor

__all__ = [
    "ModelEntry",
    "create_model",
    "get_model_entry",
    "list_models",
    "load_model",
    "load_model_with_info",
    "register_model",
]


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about one published variant."""

    name: str
    builder: Callable[..., nn.Module]
    summary: str
    default_resolution: int
    # Builds torchvision's own model with the same options (meta device is fine),
    # so that torchvision state dicts can be mapped onto ours; None if torchvision
    # has no such model.
    torchvision_twin: Callable[[Mapping[str, Any]], nn.Module] | None = None
    # What the model does, for grouping (``mobilenets models``) and for the commands
    # that train, evaluate and draw it: "classification", "detection", "segmentation".
    task: str = "classification"

    @property
    def options(self) -> dict[str, inspect.Parameter]:
        """The keyword options the builder accepts, with their defaults."""
        return dict(inspect.signature(self.builder).parameters)


_REGISTRY: dict[str, ModelEntry] = {}

# Options many builders share, checked here once instead of failing later inside torch.
_OPTION_RULES: dict[str, Rule] = {
    "resolution": POSITIVE_INT,
    "in_channels": POSITIVE_INT,
    "dropout": FRACTION,
}


def register_model(
    name: str,
    *,
    summary: str,
    default_resolution: int = 224,
    torchvision_twin: Callable[[Mapping[str, Any]], nn.Module] | None = None,
    task: str = "classification",
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a builder function to the registry under ``name``."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, summary, default_resolution, torchvision_twin, task)
        return builder

    return decorator


# Families whose modules import torchvision's detection/segmentation machinery (1.4 s):
# registered when first asked for, so that classifiers build without that import.
_TASK_MODULES = ("mobilenets.models.ssd", "mobilenets.models.segmentation")


def _register_task_models() -> None:
    import importlib

    for module in _TASK_MODULES:
        importlib.import_module(module)


def list_models(task: str | None = None) -> list[str]:
    """Names accepted by :func:`create_model`, sorted; only those for ``task`` if given."""
    _register_task_models()
    return sorted(name for name, entry in _REGISTRY.items() if task is None or entry.task == task)


TORCHVISION_PREFIX = "torchvision."


def _torchvision_entry(name: str) -> ModelEntry:
    """``torchvision.NAME``: torchvision's classifier of that name, untrained, so that
    networks outside the zoo (VGG, ResNet, ViT...) go through the same registry: their
    converted (decoupled) forms save with their architecture and ``load_model`` rebuilds them."""
    import torchvision

    short = name[len(TORCHVISION_PREFIX) :]
    available = torchvision.models.list_models(module=torchvision.models)  # the classifiers
    if short not in available:
        close = difflib.get_close_matches(short, available, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(TORCHVISION_PREFIX + c) for c in close)}?" if close else ""
        raise UnknownModelError(f"torchvision has no classifier {short!r}{hint}")

    def build(*, num_classes: int = 1000, width_mult: float = 1.0, resolution: int = 224, in_channels: int = 3):
        if width_mult != 1.0:
            raise ConfigError(
                f"{name} has no width multiplier; width_mult must be 1.0", cli=f"{name} has no --width-mult"
            )
        if in_channels != 3:
            raise ConfigError(f"{name} takes 3-channel images; in_channels must be 3")
        model = torchvision.models.get_model(short, weights=None, num_classes=num_classes)
        model.in_channels, model.default_resolution = 3, resolution
        return model

    return ModelEntry(name, build, f"torchvision's {short}", 224)


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; unknown names suggest the closest ones.

    ``torchvision.NAME`` names any torchvision classifier (``torchvision.resnet18``).
    """
    if name not in _REGISTRY:
        _register_task_models()
    try:
        return _REGISTRY[name]
    except KeyError:
        pass
    if isinstance(name, str) and name.startswith(TORCHVISION_PREFIX):
        return _torchvision_entry(name)
    normalised = str(name).lower().replace("-", "_").replace(".", "_")
    if normalised in _REGISTRY:
        return _REGISTRY[normalised]
    close = difflib.get_close_matches(normalised, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ";"
    raise UnknownModelError(
        f"unknown model {name!r}{hint} available models: {', '.join(list_models())} "
        f"(and torchvision's classifiers as torchvision.NAME)"
    )


def torchvision_twin(name: str, arch: Mapping[str, Any]) -> nn.Module:
    """torchvision's network of the same layout as the registry's ``name`` built with ``arch``."""
    return get_model_entry(name).torchvision_twin(arch)


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    width_mult: float = 1.0,
    dropout: float | None = None,
    weights: str | Path | Mapping[str, Any] | None = None,
    features_only: bool = False,
    out_indices: list[int | str] | None = None,
    **options: Any,
) -> nn.Module:
    """Build a model from the registry.

    Args:
        name: one of :func:`list_models` (e.g. ``"mobilenet_v2"``).
        num_classes: size of the classifier's output; ``None`` keeps the variant's
            default (1000 ImageNet classes; 91 for the COCO detectors, background included).
        width_mult: the width multiplier alpha (channels x alpha; cost ~ alpha**2).
        dropout: dropout before the classifier; ``None`` keeps the variant's default.
        weights: a path to a weights file (safetensors, or a ``torch.save`` state
            dict / checkpoint) or a state dict.  Both this library's layout and
            torchvision's (for ``mobilenet_v2`` / ``mobilenet_v3_*``) are accepted.
        features_only: return a backbone instead (:class:`~mobilenets.models.features.FeatureExtractor`):
            the body's feature maps at ``out_indices``, with ``feature_info`` giving
            each one's channels and stride.  ``weights`` may then be a classifier's.
        out_indices: where to take the maps: layer indices of ``features`` (negative
            from the end) or ``"INDEX.expansion"`` inside an inverted residual
            (SSDLite's tap); default: the last layer at each stride.
        **options: variant options such as ``resolution``, ``activation``,
            ``cifar``, ``linear_bottleneck``, ``residual``; see
            ``mobilenets models --verbose``.
    """
    entry = get_model_entry(name)
    kwargs: dict[str, Any] = {"width_mult": width_mult, **options}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if dropout is not None:
        kwargs["dropout"] = dropout
    accepted = entry.options
    if kwargs.get("cifar") and "resolution" in accepted and "resolution" not in kwargs:
        kwargs["resolution"] = 32  # the CIFAR variant is meant for 32x32 images
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{entry.name} does not take option(s) {', '.join(unknown)}; it accepts: {', '.join(accepted)}"
        )
    if num_classes is not None:
        POSITIVE_INT.check(num_classes, "num_classes")
    for option, rule in _OPTION_RULES.items():
        if option in kwargs:
            rule.check(kwargs[option], option)
    model = entry.builder(**kwargs)
    # Record every option, defaults included, so saved weights rebuild this exact model.
    resolved = {k: p.default for k, p in accepted.items() if p.default is not inspect.Parameter.empty}
    resolved.update(kwargs)
    if "resolution" in resolved and "resolution" not in kwargs:
        # the variant's own default, e.g. 32 for cifar=True, not the signature's 224
        resolved["resolution"] = getattr(model, "default_resolution", resolved["resolution"])
    model.arch = {"name": entry.name, **resolved}
    # how weights in torchvision's layout are mapped (a module-level partial: models still pickle)
    model.torchvision_twin = functools.partial(torchvision_twin, entry.name) if entry.torchvision_twin else None
    if out_indices is not None and not features_only:
        raise ConfigError("out_indices chooses a backbone's feature maps: pass features_only=True with it")
    if features_only:
        if not get_task(entry.task).has_classifier_body:
            raise ConfigError(f"{entry.name} is a {entry.task} model; features_only takes a classifier's body")
        model = FeatureExtractor(model, out_indices)
        model.arch.update(features_only=True, out_indices=[f.tap for f in model.feature_info])
    if weights is not None:
        load_weights(model, weights)
    return model


def load_model(path: str | Path, **overrides: Any) -> nn.Module:
    """Rebuild a model saved by :func:`save_weights` (or a training checkpoint) from its file alone."""
    return load_model_with_info(path, **overrides)[0]


def load_model_with_info(path: str | Path, **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_model`, reading the file once, plus its data info (see :func:`read_weights_file`)."""
    state, arch, info = read_weights_file(path)
    if "name" not in arch:
        hint = "a converted model of a network outside the registry: " if "converted" in arch else ""
        raise WeightsError(
            f"{path} records no architecture ({hint}build the network and call load_weights(model, {str(path)!r}))",
            cli=f"{path} records no architecture ({hint or 'a plain state dict: '}give --model NAME --weights {path})",
        )
    arch = {**arch, **overrides}
    steps = rebuild_steps()
    structure = {k: v for k, v in arch.items() if k in steps}
    model = create_model(**{k: v for k, v in arch.items() if k not in structure})
    model = apply_rebuild_steps(model, structure)
    load_weights(model, state)
    model.eval()
    return model, info
