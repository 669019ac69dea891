"""The processes of an `accelerate launch` / `torchrun` run: each searches its shard of the
tasks on its own model copy; rank 0 chooses the run folder and writes the summary files."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..harness.lm_eval_compat import single_process
from ..harness.setup import unwrap


def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class ProcessGroup:
    """The run's processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> ProcessGroup:
        if not _distributed():
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():  # (lm-eval's HFLM then shares this state)
            from accelerate import PartialState

            PartialState()
        return cls(dist.get_rank(), dist.get_world_size())

    @staticmethod
    def close() -> None:
        """Wait for every process, then tear the group down: a process that leaves while the main
        one still evaluates can abort in the collective library's threads at exit."""
        if not _distributed():
            return
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    @property
    def label(self) -> str:
        return f" [process {self.rank + 1}/{self.size}]" if self.size > 1 else ""

    def shard(self, items: list[Any]) -> list[Any]:
        """This process's share of `items` (every size-th, from its rank)."""
        return items[self.rank :: self.size]

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value`, on every process."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, value: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    @contextlib.contextmanager
    def local(self, lm: Any) -> Iterator[None]:
        """Make a data-parallel lm-eval model act as a single process (its own requests only)."""
        if self.size == 1:
            yield
            return
        with single_process(unwrap(lm)):
            yield
