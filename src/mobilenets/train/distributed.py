"""Multi-process training through ``torchrun`` (PyTorch DistributedDataParallel).

``torchrun --nproc_per_node=N -m mobilenets train ...`` sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup` reads them and joins the
process group (NCCL on GPUs, gloo on CPU).  Without them training runs in one
process and every helper here is a no-op, so the loop has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError

__all__ = ["Distributed", "setup"]


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all processes (in place); identity in one process."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every process if ``flag`` is true on any of them."""
        if not self.enabled:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: str) -> Distributed:
    """Join torchrun's process group if this process was started by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no GPU is visible")
        torch.cuda.set_device(local_rank)
        device, backend = f"cuda:{local_rank}", "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=device)
