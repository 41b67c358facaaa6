"""The worker processes a node daemon knows: id, pid, connection, address.

The node state knows workers by id only; this registry holds the I/O facts
the daemon needs to reach them or kill them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._rpc import RpcPeer

__all__ = ["WorkerRec", "WorkerRegistry"]


@dataclass(slots=True)
class WorkerRec:
    worker_id: bytes
    pid: int
    peer: RpcPeer
    address: list[Any]


class WorkerRegistry:
    """Registered workers, by id and by pid."""

    def __init__(self) -> None:
        self.by_id: dict[bytes, WorkerRec] = {}
        self.by_pid: dict[int, bytes] = {}

    def add(self, rec: WorkerRec) -> None:
        self.by_id[rec.worker_id] = rec
        self.by_pid[rec.pid] = rec.worker_id

    def remove(self, rec: WorkerRec) -> None:
        self.by_id.pop(rec.worker_id, None)
        self.by_pid.pop(rec.pid, None)

    def get(self, worker_id: bytes | None) -> WorkerRec | None:
        return self.by_id.get(worker_id) if worker_id is not None else None

    def of_pid(self, pid: int) -> WorkerRec | None:
        wid = self.by_pid.get(pid)
        return self.by_id.get(wid) if wid is not None else None

    def pid(self, worker_id: bytes | None) -> int | None:
        rec = self.get(worker_id)
        return rec.pid if rec is not None else None

    def items(self) -> list[tuple[bytes, WorkerRec]]:
        return list(self.by_id.items())

    def values(self) -> list[WorkerRec]:
        return list(self.by_id.values())

    def __len__(self) -> int:
        return len(self.by_id)
