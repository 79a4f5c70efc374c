"""Deployment: ONNX export (BN folded, checked against PyTorch), ONNX Runtime
prediction, int8 quantization, latency benchmarks and memory-efficient inference."""

from .memory_efficient import MemoryEfficientInvertedResidual, memory_efficient
from .onnx import ExportReport, export_onnx, fold_batchnorm, max_opset
from .ort import ExportError, OnnxClassifier, read_metadata
from .quantize import CALIBRATION_METHODS, WEIGHT_ROUNDING, quantize_onnx

__all__ = [
    "CALIBRATION_METHODS",
    "WEIGHT_ROUNDING",
    "ExportError",
    "ExportReport",
    "MemoryEfficientInvertedResidual",
    "OnnxClassifier",
    "export_onnx",
    "fold_batchnorm",
    "max_opset",
    "memory_efficient",
    "quantize_onnx",
    "read_metadata",
]
