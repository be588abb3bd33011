"""torchrun / DDP helpers: one process per device, gloo on CPU, NCCL on CUDA; only rank 0 writes files."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def init_distributed(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); return this process's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_ranks_true(flag: bool, device: torch.device) -> bool:
    """True only if `flag` holds on every rank, so all ranks take the same branch (no DDP hang)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
