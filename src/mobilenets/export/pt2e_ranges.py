"""How PT2E int8 (ExecuTorch's and LiteRT's exporters) chooses activation ranges: a quantizer's
config with its activation observers replaced as ``--calibration-method`` says.

* ``percentile`` (the default) - PT2E's histogram, cut at a percentile of the values seen (the
  ONNX path's rule, :func:`mobilenets.export.ptq.activation_ranges`);
* ``histogram`` - PT2E's own choice: the range minimising the histogram's L2 rounding error;
* ``minmax`` - the extremes seen.

Measured on torchvision's MobileNetV2 in LiteRT (imagenet-sample, fp32 83.8 %; 32 / 64 / 128 / 200
COCO calibration images, ``python benchmarks/litert_int8_ways.py N pt2e,default``): the histogram
choice swung between 79.5 and 82.7 % with the number of images, the percentile cut stayed within
81.7-82.8 % - hence the default for both exporters.  torchao comes with the optional extras, so
nothing here imports it before a function runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..errors import ConfigError
from ..validate import PT2E_CALIBRATION_METHODS

__all__ = ["percentile_observer", "with_activation_ranges"]


def percentile_observer():
    """PT2E's histogram observer with the ONNX path's range rule: each activation's range cut at
    a percentile of the values seen on the calibration images."""
    from torchao.quantization.pt2e.observer import HistogramObserver

    class PercentileObserver(HistogramObserver):
        # HistogramObserver's own choice keeps long tails that MobileNetV2's unbounded linear
        # bottlenecks have, spending steps on values a handful of pixels take, and moves with
        # the images seen (see the module docstring); a percentile cut measured better.
        def __init__(self, *args, percentile: float = 99.99, **kwargs):
            super().__init__(*args, **kwargs)
            self.percentile = percentile

        def calculate_qparams(self):
            low, high = self.min_val.item(), self.max_val.item()
            counts = self.histogram.double()
            if high > low and counts.sum() > 0:
                edges = torch.linspace(low, high, len(counts) + 1, dtype=torch.float64)
                cdf = counts.cumsum(0) / counts.sum()
                # a tensor never negative (after a ReLU) keeps 0 and is cut at the top only
                cut = (100.0 - self.percentile) / (100.0 if low >= 0 else 200.0)
                top = int(torch.searchsorted(cdf, torch.tensor([1.0 - cut], dtype=torch.float64)).item())
                high = float(edges[min(top + 1, len(counts))])
                if low < 0:
                    low = float(edges[int(torch.searchsorted(cdf, torch.tensor([cut], dtype=torch.float64)).item())])
            return self._calculate_qparams(torch.tensor(min(low, 0.0)), torch.tensor(max(high, 0.0)))

    return PercentileObserver


def with_activation_ranges(config: Any, method: str, percentile: float, file_format: str) -> Any:
    """``config`` (a PT2E ``QuantizationConfig``) with its activation observers chosen by
    ``method``; an unknown method is a one-line error naming ``file_format``."""
    from torchao.quantization.pt2e.observer import MinMaxObserver

    if method == "histogram":
        return config
    if method == "percentile":
        observer = percentile_observer().with_args(percentile=percentile, eps=2**-12)
    elif method == "minmax":
        observer = MinMaxObserver.with_args(eps=2**-12)
    else:
        methods = ", ".join(PT2E_CALIBRATION_METHODS)
        raise ConfigError(
            f"PT2E int8 ranges are one of {methods}, got {method!r}",
            cli=f"--calibration-method {method} is not available for --format {file_format} (one of {methods})",
        )

    def ranged(spec):
        return dataclasses.replace(spec, observer_or_fake_quant_ctr=observer) if spec is not None else None

    return dataclasses.replace(
        config, input_activation=ranged(config.input_activation), output_activation=ranged(config.output_activation)
    )
