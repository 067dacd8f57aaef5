"""One process per GPU (or one per host on CPU), joined by torch.distributed.

launch.py starts the processes with torchrun, which sets RANK, WORLD_SIZE,
LOCAL_RANK and LOCAL_WORLD_SIZE; ``init`` reads them once into a World. Without
them this module reports a world of one and every helper is a no-op, so the
single-process path has no distributed cost at all.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the job's processes, and the device it computes on."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1  # processes on this host
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0 alone logs metrics and writes checkpoints and artifacts."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init() -> World:
    """This process's World (GPU number `local_rank` where there are GPUs), joined to
    the others when there are several processes."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = 0, 0
    if size > 1:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    local_size = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    device = (torch.device("cuda", local_rank) if torch.cuda.is_available()
              else torch.device("cpu"))
    world = World(rank, max(size, 1), local_rank, local_size, device)
    if not world.distributed:
        return world
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return world


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def sum_all(world: World, values: list[float], device: torch.device) -> list[float]:
    """Sum numbers over all ranks (losses, counts), in float64 so counts stay exact."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(world: World, flag: bool, device: torch.device) -> bool:
    """True on every rank when any rank says True (e.g. one of them got SIGTERM)."""
    if not world.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def union_all(world: World, items: set) -> set:
    """The union of every rank's set (names of the bad images each rank met)."""
    if not world.distributed:
        return set(items)
    boxes: list = [None] * world.size
    dist.all_gather_object(boxes, sorted(items))
    return set().union(*boxes)


def broadcast(world: World, obj, device: torch.device):
    """Rank 0's object on every rank (a resumed checkpoint)."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=device)
    return box[0]


class EpochSampler(torch.utils.data.Sampler):
    """Shuffles per epoch from (seed, epoch), shards across ranks and can start mid-epoch.

    The order depends only on the seed and the epoch, so a resumed job sees the
    same batches as the one that was interrupted and skips those already done.
    Training shards are padded to equal length (every rank takes the same number
    of steps, as DDP needs); evaluation shards are not, so every image counts once.
    """

    def __init__(self, n: int, world: World, seed: int, shuffle: bool, pad: bool):
        self.n, self.world, self.seed, self.shuffle, self.pad = n, world, seed, shuffle, pad
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch `epoch`, skipping its first `start` samples on this rank."""
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.pad and self.world.size > 1 and order:
            total = math.ceil(self.n / self.world.size) * self.world.size
            order += order[: total - self.n]
        return order[self.world.rank::self.world.size]

    def __iter__(self):
        return iter(self._indices()[self.start:])

    def __len__(self) -> int:
        return max(0, len(self._indices()) - self.start)
