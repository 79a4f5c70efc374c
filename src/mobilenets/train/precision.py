"""Autocast by precision name: the one map from ``--precision`` to the dtype that training and
evaluation compute in."""

from __future__ import annotations

import torch

__all__ = ["DTYPES", "autocast"]

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device_type: str, precision: str) -> torch.autocast:
    """``torch.autocast`` at ``precision`` ("fp32": off)."""
    dtype = DTYPES[precision]
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)
