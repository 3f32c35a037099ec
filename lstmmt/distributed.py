"""Data-parallel training on torch.distributed: which process this is, and the few collectives training needs.

`torchrun --nproc_per_node N -m lstmmt train RUN` starts N processes ("ranks") with
RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR in their environment. Every rank builds the same
global batches (their order is a pure function of seed and epoch) and trains on its own
shard of each; DistributedDataParallel all-reduces the gradients, so all ranks take the
same optimizer step. Rank 0 alone validates, logs and writes checkpoints, and tells the
others what it decided. A plain `lstmmt train` is the one-rank case of the same code.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from lstmmt.device import resolve_device
from lstmmt.errors import UserError


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that validates, logs and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


@contextmanager
def joined(device_name: str) -> Iterator[tuple[Ranks, torch.device]]:
    """This rank and its device (setup) for the block, then leave the process group (teardown):
    after the others once the block ends, at once when it raises."""
    ranks, device = setup(device_name)
    try:
        yield ranks, device
    except BaseException:
        teardown(finished=False)
        raise
    teardown(finished=True)


def setup(device_name: str) -> tuple[Ranks, torch.device]:
    """Join the process group torchrun describes in the environment (if any) and pick this rank's device.

    NCCL joins GPU ranks (one GPU per rank, by LOCAL_RANK), gloo CPU ranks.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(), resolve_device(device_name)
    if "MASTER_ADDR" not in os.environ:
        raise UserError("WORLD_SIZE is set but MASTER_ADDR is not: launch with `torchrun` or `lstmmt train --nproc N`")
    device = resolve_device(device_name)
    if device.type == "cuda":
        check_gpus_for(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), device)
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=1))
    return Ranks(dist.get_rank(), dist.get_world_size()), device


def check_gpus_for(ranks_here: int, device: torch.device) -> None:
    """GPU ranks take one GPU each: more ranks on a machine than it has GPUs is a UserError
    (CUDA itself would fail with 'invalid device ordinal' in every extra rank)."""
    if device.type == "cuda" and ranks_here > (count := torch.cuda.device_count()):
        raise UserError(f"{ranks_here} processes on this machine need {ranks_here} GPUs, but PyTorch sees {count}; "
                        f"use --nproc {count} (or torchrun --nproc_per_node {count}), or --device cpu")


def teardown(finished: bool) -> None:
    """Leave the process group. A rank that finished waits for the others first: one that tears
    gloo down while a peer is still at work can abort at exit ("terminate called without an
    active exception"). A rank leaving on an error does not wait (the others may never come)."""
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def shard(indices: np.ndarray, ranks: Ranks) -> np.ndarray:
    """This rank's sentences of a global batch: every world-th one, so shards have similar lengths."""
    return indices[ranks.rank :: ranks.world]


def any_rank(flags: list[bool], ranks: Ranks, device: torch.device) -> list[bool]:
    """For each flag, True on every rank if it is True on any (e.g. one of them got a signal); one all-reduce."""
    if not ranks.distributed:
        return flags
    values = torch.tensor([float(flag) for flag in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(value) for value in values.tolist()]


def from_main(value: object, ranks: Ranks) -> object:
    """Rank 0's `value` on every rank (for decisions only rank 0 can make, such as validation results)."""
    if not ranks.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_ranks(values: list[float], ranks: Ranks, device: torch.device) -> list[float]:
    """Element-wise sum of `values` over all ranks (for logging global loss and token counts)."""
    if not ranks.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()
