"""Data-parallel runs under ``torchrun``: which process this is, which share of the work is its own,
and the few collective steps (wait, gather, merge) the expensive commands need.

Launched as ``torchrun --nproc-per-node N prism study ...`` (or by a cluster launcher that sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``), every process loads
the model and takes a deterministic share of the work units (shards of prompts, chunks of a
ledger's work) by their index: unit ``i`` belongs to rank ``i % N``. Units are the same as in a
single-process run, so each is computed exactly as it would be alone and the merged outputs are
the same. Rank 0 alone writes merged files, reports and figures and prints the summary. Without
those variables the world is one process and nothing here talks to torch.distributed.

The process group carries only small Python objects (finished shard lists) and barriers, so it is
gloo, with NCCL added for CUDA tensors when a GPU is present; no gradients are exchanged.
"""

from __future__ import annotations

import atexit
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

from probes.core.errors import ToolkitError

__all__ = ["World", "world"]

# a rank may wait at a barrier while others finish a long share or rank 0 writes reports
_TIMEOUT = timedelta(hours=12)

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run.

    Args:
        rank: this process's index, 0..size-1 (rank 0 writes merged outputs).
        size: how many processes share the run.
        local_rank: the index among the processes on this machine (which GPU it takes).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes merged outputs and prints (rank 0)."""
        return self.rank == 0

    @property
    def is_parallel(self) -> bool:
        return self.size > 1

    def owns(self, index: int) -> bool:
        """Whether work unit ``index`` is this rank's: ``index % size == rank``."""
        return index % self.size == self.rank

    def share(self, units: Sequence[T]) -> list[T]:
        """This rank's units of ``units``, in order."""
        return [unit for index, unit in enumerate(units) if self.owns(index)]

    def barrier(self) -> None:
        """Wait until every rank gets here (nothing in a one-process world)."""
        if self.is_parallel:
            dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if not self.is_parallel:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.is_parallel:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @contextmanager
    def together(self) -> Iterator[None]:
        """Run this rank's share of some work; on leaving, every rank learns whether any rank failed, so no rank
        waits for a partner that is gone.

        Raises:
            BaseException: the rank's own error, when its share failed.
            ToolkitError: on the other ranks, naming the rank that failed.
        """
        try:
            yield
        except BaseException as error:
            self._agree(error)
            raise
        self._agree(None)

    def on_main(self, work: Callable[[], T]) -> T:
        """``work()`` run by rank 0 alone (writing merged outputs), its result given to every rank."""
        result = None
        with self.together():
            if self.is_main:
                result = work()
        return self.broadcast(result)

    def _agree(self, failed: BaseException | None) -> None:
        errors = self.gather(None if failed is None else f"{type(failed).__name__}: {failed}")
        bad = [f"rank {rank}: {error}" for rank, error in enumerate(errors) if error is not None]
        if bad and failed is None:
            raise ToolkitError("another process of this run failed (" + "; ".join(bad) + ")")


_WORLD: World | None = None


def world() -> World:
    """The current run's world, from the launcher's variables; joins the process group on first call.

    Returns:
        ``World()`` (one process) when ``WORLD_SIZE`` is unset or 1.

    Raises:
        ToolkitError: launch variables that are incomplete or not integers.
    """
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    size = _integer("WORLD_SIZE", default=1)
    if size <= 1:
        _WORLD = World()
        return _WORLD
    rank, local_rank = _integer("RANK"), _integer("LOCAL_RANK", default=0)
    if not 0 <= rank < size:
        raise ToolkitError(f"RANK={rank} is outside WORLD_SIZE={size}: launch with torchrun --nproc-per-node N")
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, timeout=_TIMEOUT)
        atexit.register(dist.destroy_process_group)
    _WORLD = World(rank=rank, size=size, local_rank=local_rank)
    return _WORLD


def _integer(name: str, default: int | None = None) -> int:
    text = os.environ.get(name)
    if text is None:
        if default is None:
            raise ToolkitError(f"{name} is not set although WORLD_SIZE is: launch with torchrun --nproc-per-node N")
        return default
    try:
        return int(text)
    except ValueError:
        raise ToolkitError(f"{name}={text!r} is not an integer: launch with torchrun --nproc-per-node N") from None
