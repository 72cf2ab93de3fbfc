"""Processes and devices through Accelerate: one `PartialState` per run, for every entry point.

Under ``torchrun`` or ``accelerate launch`` `process_state` sets up the process group (gloo on CPU, NCCL on GPUs)
and gives each process its device. Calibration batches are split by rank (`my_share`), statistics are summed
before any score, every process decides the same masks, and only the main process writes, pushes and prints while
the others wait (`main_process_writes`). In a single process all of this is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def process_state() -> Any:
    """Accelerate's `PartialState` (created on first use; it initialises the process group under a launcher)."""
    from accelerate import PartialState

    return PartialState()


def launched_with_processes() -> bool:
    """Started by ``torchrun`` / ``accelerate launch`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_world()[0] == 0


def my_share(batches: list[T]) -> list[T]:
    """This process's calibration batches: every ``world``-th one, starting at its rank (disjoint shares)."""
    rank, world = rank_world()
    return batches[rank::world]


def gather_counts(count: int) -> list[int]:
    """``count`` of every process, in rank order (what each process really did, for the report)."""
    _, world = rank_world()
    if world == 1:
        return [count]
    t = torch.zeros(world, dtype=torch.long, device=_collective_device())
    t[rank_world()[0]] = count
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [int(x) for x in t.cpu()]


def all_reduce_sum(t: torch.Tensor) -> None:
    """Sum ``t`` in place across processes (no-op in one process)."""
    if rank_world()[1] > 1:
        if dist.get_backend() == "nccl" and t.device.type != "cuda":
            moved = t.cuda()
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            t.copy_(moved.cpu())
        else:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def broadcast_masks(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank 0's masks on every process. Statistics are already summed across ranks, so this only guards against
    floating-point ties resolving differently; it also makes the guarantee explicit."""
    if rank_world()[1] == 1:
        return masks
    out = {}
    for n in sorted(masks):
        t = masks[n].to(torch.uint8).to(_collective_device())
        dist.broadcast(t, src=0)
        out[n] = t.cpu().bool()
    return out


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` (any picklable value made by this library) on every process; itself in one process. Used
    for decisions that rest on floating-point comparisons (the target search's choice, generated tokens), so that
    near-ties cannot resolve differently on different processes."""
    if rank_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_collective_device())
    return box[0]


def gather_objects(obj: T) -> list[T]:
    """Every process's ``obj`` (picklable), in rank order, on every process; ``[obj]`` in one process. Used where
    each process computed a share that all of them need (the teacher cache)."""
    world = rank_world()[1]
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def wait_for_everyone() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


@contextlib.contextmanager
def main_process_writes() -> Iterator[bool]:
    """``with main_process_writes() as main: if main: save(...)``; the other processes wait at the end of the
    block until the main one is done, so no process returns before the output is complete. An error on the main
    process still releases the others (they would otherwise hang at the barrier)."""
    try:
        yield is_main_process()
    finally:
        wait_for_everyone()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
