"""torchrun process groups for embed-teacher and train: NCCL on CUDA, gloo on CPU, one process otherwise."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class Processes:
    rank: int
    world: int
    device: torch.device
    distributed: bool

    @property
    def master(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(device_ids=[self.device.index]) if self.device.type == "cuda" else dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over all processes."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()


@contextmanager
def process_group(device: str | None, timeout: timedelta | None = None) -> Iterator[Processes]:
    """Under torchrun (RANK set): join the group, one device per local rank. Otherwise rank 0 of 1.

    timeout: how long a collective (barrier, all-reduce) waits for the slowest process (torch's default if None).
    """
    if "RANK" not in os.environ:
        yield Processes(0, 1, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")), False)
        return
    use_cuda = torch.cuda.is_available() and device != "cpu"
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
    try:
        chosen = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}" if use_cuda else "cpu")
        if use_cuda:
            torch.cuda.set_device(chosen)
        yield Processes(dist.get_rank(), dist.get_world_size(), chosen, True)
    finally:
        dist.destroy_process_group()
