"""What a model file says about the data it serves: one typed record for every file kind.

A :class:`DataInfo` is written beside the weights (safetensors metadata, a checkpoint's ``data``),
derived from a training checkpoint's resolved settings, and carried in every exported file's
metadata (ONNX, ExecuTorch, OpenVINO, LiteRT); :meth:`DataInfo.from_record` reads any of them and
:meth:`DataInfo.to_record` writes the JSON they store.  A field is ``None`` where the file does not
say; ``predict.default_data_info`` fills those gaps from the model and its task.  What a runtime's
file records beyond the data (its format, precision, outputs, a detector's post-processing) is
kept in ``extra``.  The record reads like the mapping the files hold (``info["classes"]``,
``info.get("resolution")``) for code written before it was typed.  No torch here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import WeightsError

__all__ = ["DataInfo"]


# eq=False: compared as the mapping it reads as (a DataInfo equals the dict a file holds)
@dataclass(frozen=True, eq=False)
class DataInfo(Mapping):
    task: str | None = None  # the task registry's name ("classification", "detection", ...)
    classes: list[str] | None = None  # class names, in the model's output order
    # where the names come from: "recorded" (the data it was trained on), "imagenet"/"coco"/"voc"
    # (its published weights' classes), "placeholder" (numbers: nothing said)
    classes_source: str | None = None
    transforms: str | None = None  # the preprocessing (a data.STYLES name, "detection", "segmentation")
    resolution: int | None = None  # the input side in pixels
    in_channels: int | None = None
    class_ids: list[int] | None = None  # a segmenter's: each class's value in the dataset's masks
    selected_classes: list[str] | None = None  # the classes --classes kept of the dataset's
    extra: dict[str, Any] = field(default_factory=dict)  # what a file records beyond the data

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None, *, source: str = "the file") -> DataInfo:
        """The record any file kind stores (unknown keys go to ``extra``); a field of the wrong
        type is a :class:`~mobilenets.WeightsError` naming ``source`` and the key."""
        if isinstance(record, DataInfo):
            return record
        record = dict(record or {})
        known = {}
        for item in dataclasses.fields(cls):
            if item.name != "extra" and record.get(item.name) is not None:
                known[item.name] = _checked(item.name, record.pop(item.name), source)
        record.pop("extra", None)
        return cls(**known, extra=record)

    @classmethod
    def from_checkpoint(cls, resolved: Mapping[str, Any]) -> DataInfo:
        """What a training checkpoint's resolved settings say of its data."""
        return cls(
            classes=list(resolved["classes"]),
            transforms=resolved["recipe"]["transforms"],
            resolution=resolved["resolution"],
            class_ids=resolved.get("class_ids"),  # a segmenter's
            selected_classes=resolved.get("selected_classes"),  # trained on these classes (--classes)
        )

    def to_record(self) -> dict[str, Any]:
        """The JSON-ready mapping a file stores (fields that say something, then ``extra``)."""
        return dict(self)

    def replace(self, **changes: Any) -> DataInfo:
        """A copy with ``changes`` (``extra`` keys too: any name that is not a field)."""
        names = {item.name for item in dataclasses.fields(self)}
        extra = {key: changes.pop(key) for key in list(changes) if key not in names}
        if extra:
            changes["extra"] = {**self.extra, **changes.get("extra", {}), **extra}
        return dataclasses.replace(self, **changes)

    # -- read as the mapping a file holds ------------------------------------------------
    def _items(self) -> dict[str, Any]:
        fields = {item.name: getattr(self, item.name) for item in dataclasses.fields(self) if item.name != "extra"}
        return {**{k: v for k, v in fields.items() if v is not None}, **self.extra}

    def __getitem__(self, key: str) -> Any:
        return self._items()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())


def _checked(key: str, value: Any, source: str) -> Any:
    expected = {"classes": str, "selected_classes": str, "class_ids": int}
    if key in expected:
        if not isinstance(value, list) or not all(isinstance(v, expected[key]) for v in value):
            kind = "names" if expected[key] is str else "integers"
            raise WeightsError(f"{source} records {key} as {value!r:.60}, not a list of {kind}")
        return list(value)
    if key in ("resolution", "in_channels"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise WeightsError(f"{source} records {key} {value!r:.40}, not a positive whole number")
        return value
    if not isinstance(value, str):
        raise WeightsError(f"{source} records {key} {value!r:.40}, not a name")
    return value
