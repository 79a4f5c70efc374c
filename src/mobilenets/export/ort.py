"""ONNX files at run time: the onnx and onnxruntime modules, an ONNX Runtime session, the metadata
a mobilenets export carries (class names, preprocessing) and the classifier that runs one.

Below the export (``onnx.py``) and the detector's runner (``detection.py``), which both read files
through it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..datainfo import DataInfo
from ..errors import MobileNetsError
from ..extras import require
from ..validate import exported_batch

__all__ = [
    "FORMAT",
    "METADATA_KEY",
    "ExportError",
    "OnnxClassifier",
    "onnx_modules",
    "ort_session",
    "read_metadata",
    "relative_error",
    "session_with_outputs",
    "set_metadata",
]

METADATA_KEY = "mobilenets"
FORMAT = "mobilenets-onnx/1"


class ExportError(MobileNetsError, RuntimeError):
    """Export failed, or the exported model does not compute what the PyTorch model does."""


def onnx_modules():
    """``(onnx, onnxruntime)``, or a ConfigError naming the extra that installs them."""
    return require("onnx", "ONNX export", "onnx"), require("onnxruntime", "ONNX export", "onnx")


def ort_session(path: str | Path | bytes, threads: int | None = None, *, run_once: bool = False):
    """An ONNX Runtime CPU session with full graph optimisation (a file, or a serialized model).

    ``run_once``: the session is built, run on one batch and dropped, as the int8 range search does
    hundreds of times; its worker threads then sleep instead of spinning between tasks. The kernels
    and results are the same; what changes is that the spinning workers of one trial no longer take
    the cores from the graph optimisation of the next."""
    _, ort = onnx_modules()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if run_once:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        source = path if isinstance(path, bytes) else str(path)
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        where = "the model" if isinstance(path, bytes) else path
        raise ExportError(f"ONNX Runtime cannot load {where}: {exc}") from exc


def session_with_outputs(graph, names: list[str]):
    """An ONNX Runtime session on a copy of ``graph`` (an ``onnx.ModelProto``) that also returns
    the named intermediate tensors, and those of ``names`` it can return (a graph input is not an
    output: its value is what the caller feeds).  Calibration and range matching read activations so."""
    import onnx

    exposed_graph = onnx.ModelProto()
    exposed_graph.CopyFrom(graph)
    inputs = {i.name for i in exposed_graph.graph.input}
    outputs = {o.name for o in exposed_graph.graph.output}
    exposed = [name for name in names if name not in inputs]
    for name in exposed:
        if name not in outputs:
            exposed_graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return ort_session(exposed_graph.SerializeToString()), exposed


def relative_error(actual, expected: Tensor) -> float:
    """max |actual - expected| / max |expected|: how far a runtime is from PyTorch."""
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = expected.detach().double()
    return ((actual - expected).abs().max() / expected.abs().max().clamp(min=1e-12)).item()


def set_metadata(graph, metadata: dict[str, Any]) -> None:
    """Store ``metadata`` in the graph under :data:`METADATA_KEY` (replacing any earlier record)."""
    for prop in list(graph.metadata_props):
        if prop.key == METADATA_KEY:
            graph.metadata_props.remove(prop)
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    graph.producer_name = "mobilenets"


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The preprocessing and class names a mobilenets export carries."""
    onnx, _ = onnx_modules()
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"ONNX file not found: {path}")
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors
        raise ExportError(f"{path} is not an ONNX model: {exc}") from exc
    props = {p.key: p.value for p in graph.metadata_props}
    if METADATA_KEY not in props:
        producer = f"written by {graph.producer_name}" if graph.producer_name else "no producer recorded"
        raise ExportError(
            f"{path} carries no mobilenets metadata ({producer}): without the preprocessing and class names that "
            "'mobilenets export' records, its input cannot be prepared safely; export the model with 'mobilenets export'"
        )
    return json.loads(props[METADATA_KEY])


class OnnxClassifier:
    """A mobilenets ONNX export run by ONNX Runtime: call it on a preprocessed batch (its
    output, or a tuple of them where the graph has several: a detector's boxes and scores).

    ``info`` is the file's :class:`~mobilenets.datainfo.DataInfo` (classes, preprocessing,
    resolution, and what the export records beyond them), so
    :func:`mobilenets.predict.predict_images` takes it like a PyTorch model.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        self.path = Path(path)
        info = DataInfo.from_record(read_metadata(self.path), source=str(self.path))
        self.session = ort_session(self.path, threads)
        shape = self.session.get_inputs()[0].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.input_shape = tuple(shape[1:])
        self.info = info.replace(in_channels=info.in_channels or self.input_shape[0])  # predict converts images to this

    def eval(self) -> OnnxClassifier:
        """Already an inference graph (as a PyTorch model's ``eval()``, for code that calls it)."""
        return self

    def __call__(self, images: Tensor) -> Tensor:
        images = exported_batch(images, self.input_shape, self.path.name)
        if self.fixed_batch is not None and images.shape[0] != self.fixed_batch:
            # exported without --dynamic-batch: run the batch one image at a time
            parts = [self.session.run(None, {"image": image[None].numpy()}) for image in images]
            outputs = [np.concatenate([part[i] for part in parts]) for i in range(len(parts[0]))]
        else:
            outputs = self.session.run(None, {"image": images.numpy()})
        tensors = tuple(torch.from_numpy(output) for output in outputs)
        return tensors[0] if len(tensors) == 1 else tensors  # a detector's: (boxes, scores)
