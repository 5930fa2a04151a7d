"""The processes of one extraction: a torchrun / `accelerate launch` job, or a single process.

Rank, world size and the process group come from accelerate's `PartialState`
(torchrun's environment variables; NCCL on GPUs, gloo on CPUs — it needs
`cpu=True` there). The leader (rank 0) takes the cache's lock, plans first
and merges; the others follow its plan, so every rank splits the same list of
missing shards. The group's timeout is long because ranks wait at the end for
the slowest one, and torchrun stops every rank when one fails.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, TypeVar

import torch

from expclip.base.errors import ExpclipError, PeerFailed

T = TypeVar("T")
WAIT = timedelta(hours=2)  # the longest a rank waits for the others (after its own shards, before the merge)


@dataclass(frozen=True)
class Team:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This rank's own GPU when the job runs on GPUs."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.size > 1 else device

    def share(self, value: T) -> T:
        """The leader's `value`, on every rank."""
        if self.size == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank (also a barrier)."""
        if self.size == 1:
            return [value]
        found: list = [None] * self.size
        torch.distributed.all_gather_object(found, value)
        return found

    def leader_first(self, work: Callable[[], T], *, others: bool = True) -> T | None:
        """`work()` on the leader, then (unless not `others`: None there) on the others once it succeeded;
        the leader's error stops every rank."""
        if self.size == 1:
            return work()
        result, error = None, None
        if self.leader:
            try:
                result = work()
            except ExpclipError as e:
                error = e
        said = self.share(None if error is None else str(error))
        if error is not None:
            raise error
        if said is not None:
            raise PeerFailed(said)
        return result if self.leader else work() if others else None


def join(device: torch.device) -> Team:
    """This process's place in a launched job (a team of one without torchrun's environment)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Team()
    from accelerate import PartialState

    state = PartialState(cpu=device.type != "cuda", timeout=WAIT)
    return Team(state.process_index, state.num_processes, state.local_process_index)
