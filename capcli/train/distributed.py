"""Training on several processes with torch.distributed, as launched by ``torchrun``.

torchrun gives every process ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address; :func:`session` reads them, joins the process group (NCCL
when the ranks train on CUDA GPUs, gloo on CPUs) and puts each rank on
``cuda:LOCAL_RANK``.  Without those variables (or with ``WORLD_SIZE=1``) it is
a single process and nothing here communicates.

The division of labour (see :mod:`capcli.train.loop`): every rank computes
its share of each global batch and DistributedDataParallel averages the
gradients; rank 0 alone fills the feature cache first, evaluates on the dev
split, writes the run folder and decides when to stop, and tells the others.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from capcli.errors import FatalError

T = TypeVar("T")

# The other ranks wait at a barrier while rank 0 fills the feature cache: for COCO on CPUs that takes hours.
TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (the defaults: a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "world_size": self.world_size,
            "nodes": -(-self.world_size // self.local_world_size),
        }

    def share(self, rows: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This rank's contiguous part of a global batch, and the weight of its loss.

        A batch smaller than the world leaves some ranks without rows: they run
        the first row with weight 0, so that every rank still joins the gradient
        exchange and adds nothing to it.
        """
        part = rows.tensor_split(self.world_size)[self.rank]
        return (part, 1.0) if len(part) else (rows[:1], 0.0)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over the ranks (in place)."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value`` (a picklable object), in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (the others pass anything, e.g. None)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 and its result sent to all; its FatalError is raised on every rank."""
        if not self.distributed:
            return fn()
        result: tuple[Any, str | None] = (None, None)
        failure: FatalError | None = None
        if self.main:
            try:
                result = (fn(), None)
            except FatalError as exc:
                failure, result = exc, (None, str(exc))
        value, message = self.broadcast(result)
        if failure is not None:
            raise failure
        if message is not None:
            raise FatalError(message)
        return value

    def in_turns(self, fn: Callable[[], T]) -> T:
        """``fn()`` on every rank: rank 0 first, then the first rank of each other node, then the rest.

        For caches: rank 0 fills it and the others find it; where the cache
        folder is not shared between nodes, one rank per node fills its node's.
        """
        if not self.distributed:
            return fn()
        turn = 0 if self.main else 1 if self.local_rank == 0 else 2
        result: T | None = None
        for t in range(3):
            if t == turn:
                result = fn()
            dist.barrier()
        return result  # type: ignore[return-value]


def resolve_device(name: str) -> torch.device:
    """``--device`` of a single process: auto, cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FatalError("--device cuda: no CUDA GPU is available to torch")
    return torch.device(name)


def _rank_device(name: str, local_rank: int) -> torch.device:
    """``--device`` of one of several processes: each takes the GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda":
        raise FatalError(
            f"--device {name}: under torchrun each process uses cuda:LOCAL_RANK; "
            "give --device cuda, auto or cpu (choose GPUs with CUDA_VISIBLE_DEVICES)"
        )
    if local_rank >= torch.cuda.device_count():
        raise FatalError(
            f"LOCAL_RANK {local_rank}, but torch sees {torch.cuda.device_count()} CUDA GPUs "
            "(start at most that many processes per node)"
        )
    return torch.device("cuda", local_rank)


@contextmanager
def session(device: str) -> Iterator[tuple[Ranks, torch.device]]:
    """This process's ranks and training device, inside the process group when there is one.

    Joins the group torchrun describes (and leaves it at the end); a group the
    caller has already initialised is used as it is and left open.
    """
    env = os.environ
    local_rank = int(env.get("LOCAL_RANK", "0"))
    local_world = int(env.get("LOCAL_WORLD_SIZE", "0"))
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        ranks = Ranks(dist.get_rank(), world, local_rank, local_world or world, dist.get_backend())
        yield ranks, (_rank_device(device, local_rank) if ranks.distributed else resolve_device(device))
        return
    world = int(env.get("WORLD_SIZE", "1"))
    if world == 1:
        yield Ranks(), resolve_device(device)
        return
    if not dist.is_available():
        raise FatalError("WORLD_SIZE > 1, but this torch build has no torch.distributed")
    target = _rank_device(device, local_rank)
    backend = "nccl" if target.type == "cuda" else "gloo"
    if target.type == "cuda":
        torch.cuda.set_device(target)
    dist.init_process_group(backend, timeout=TIMEOUT, device_id=target if target.type == "cuda" else None)
    try:
        yield Ranks(dist.get_rank(), world, local_rank, local_world or world, backend), target
        dist.barrier()  # no rank tears the group down while another still talks to it
    finally:
        _release_group()


def _release_group() -> None:
    """Destroy the process group now, while the interpreter is whole.

    DistributedDataParallel lives in a reference cycle (its autograd hooks point back at it), so after
    training it outlives the loop, holding the process group and its pending work until the cyclic
    garbage collector runs -- at worst during interpreter shutdown, where destroying gloo's threads
    aborted finished processes ("terminate called without an active exception", about one run in
    three).  Collecting first lets destroy_process_group() release the group's last reference here.
    """
    gc.collect()
    dist.destroy_process_group()
