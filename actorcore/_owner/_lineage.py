"""Lineage: how an owner rebuilds objects whose every copy was on a dead node. No I/O.

When a retryable task (``max_retries != 0``) of this process finishes with a
result in the object store, its owner keeps the task as a
:class:`LineageRecord` for as long as one of its return objects is
referenced. If every copy of such an object goes with a dead node,
:meth:`Lineage.lost` answers :class:`Resubmit`: the shell resets the task's
return objects to pending and submits the same task again (same return ids),
so readers simply wait for the new value. Its ObjectRef arguments are
resolved again; an argument lost in the same event is rebuilt the same way
first (the resubmitted task waits on its pending entry), which makes the
rebuild recursive along the lineage.

An object with no record (made by ``put``, by a task with ``max_retries=0``,
or by an actor call) answers :class:`FailObject` with
:class:`~actorcore.errors.ObjectLostError`; a record out of attempts answers
it with :class:`~actorcore.errors.ObjectReconstructionFailedError`. Each
rebuild uses one of the task's remaining retries.

Memory: a record holds the task's spec, i.e. its serialized arguments (inline
payload, or the store copy they were put in) and the refs of its ObjectRef
arguments, which keeps those argument objects (and their own lineage) alive
while the result is referenced: a chain of retryable tasks keeps every
intermediate result of the chain until its last result is freed. Records are
dropped (:class:`ReleaseLineage`: the shell lets go of the arguments) as soon
as the last return object of the task is freed. Lineage is kept only in a
cluster (on one machine no node can die alone).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ObjectLostError, ObjectReconstructionFailedError

__all__ = [
    "FailObject",
    "Lineage",
    "LineageRecord",
    "ReleaseLineage",
    "Resubmit",
]


@dataclass(slots=True, eq=False)
class LineageRecord:
    """A finished task kept so that its results can be made again."""

    task_id: bytes
    name: str
    spec: Any  # the owner's TaskSpec (opaque here)
    return_ids: tuple[bytes, ...]
    live: set[bytes]  # return objects still referenced
    attempts_left: int  # -1: unlimited
    rebuilding: bool = False
    rebuilds: int = 0
    deps: list[Any] = field(default_factory=list)  # the argument refs it keeps alive


@dataclass(frozen=True, slots=True)
class Resubmit:
    """Run ``record``'s task again: reset its return objects to pending first."""

    record: LineageRecord


@dataclass(frozen=True, slots=True)
class FailObject:
    """Object ``oid`` cannot be had again: complete it with ``error``."""

    oid: bytes
    error: BaseException


@dataclass(frozen=True, slots=True)
class ReleaseLineage:
    """No return object of ``record``'s task is referenced: let go of its arguments."""

    record: LineageRecord


Instruction = Resubmit | FailObject | ReleaseLineage


class Lineage:
    """The lineage records of one owner, by task and by return object."""

    def __init__(self) -> None:
        self.by_task: dict[bytes, LineageRecord] = {}
        self.by_object: dict[bytes, LineageRecord] = {}

    # --- events ---------------------------------------------------------------------

    def finished(
        self,
        task_id: bytes,
        name: str,
        spec: Any,
        return_ids: Iterable[bytes],
        live: Iterable[bytes],
        attempts_left: int,
        deps: list[Any] | None = None,
    ) -> bool:
        """A task finished with results in the store; True if it is kept as lineage.

        ``live``: its return objects still referenced now. A rebuilt task
        finishing is its record's rebuild done (its attempts are not reset).
        """
        rec = self.by_task.get(task_id)
        if rec is not None:
            rec.rebuilding = False
            for oid in rec.live - set(live):  # freed while it was being rebuilt
                if self.by_object.get(oid) is rec:
                    del self.by_object[oid]
            rec.live &= set(live)
            if rec.live:
                return True
            self._drop(rec)
            return False
        live = set(live)
        if attempts_left == 0 or not live:
            return False
        rec = LineageRecord(
            task_id, name, spec, tuple(return_ids), live, attempts_left, deps=list(deps or [])
        )
        self.by_task[task_id] = rec
        for oid in live:
            self.by_object[oid] = rec
        return True

    def freed(self, oids: Iterable[bytes]) -> list[ReleaseLineage]:
        """Objects were freed (no reference left): drop the records nobody needs."""
        out: list[ReleaseLineage] = []
        for oid in oids:
            rec = self.by_object.pop(oid, None)
            if rec is None:
                continue
            rec.live.discard(oid)
            if not rec.live and not rec.rebuilding:
                out.append(self._drop(rec))
        return out

    def lost(self, oids: Iterable[bytes], why: str) -> list[Instruction]:
        """Every copy of these owned objects is gone (``why``): rebuild or fail each."""
        out: list[Instruction] = []
        for oid in oids:
            rec = self.by_object.get(oid)
            if rec is None:
                out.append(
                    FailObject(
                        oid,
                        ObjectLostError(
                            f"object {oid.hex()} is lost: {why}, and it has no lineage to "
                            f"rebuild it from (made by put, by an actor call, or by a task "
                            f"with max_retries=0)"
                        ),
                    )
                )
            elif rec.rebuilding:
                continue  # one rebuild makes every return object of the task
            elif rec.attempts_left == 0:
                out.append(
                    FailObject(
                        oid,
                        ObjectReconstructionFailedError(
                            f"object {oid.hex()} is lost: {why}; task {rec.name} that made it "
                            f"has no retries left to run again ({rec.rebuilds} rebuilds so far)"
                        ),
                    )
                )
            else:
                if rec.attempts_left > 0:
                    rec.attempts_left -= 1
                rec.rebuilding = True
                rec.rebuilds += 1
                out.append(Resubmit(rec))
        return out

    def rebuild_failed(self, task_id: bytes) -> LineageRecord | None:
        """The rebuild of ``task_id`` failed: the record goes (its objects hold the error).

        Returns the record (its arguments are to be released), or None if it was not
        a rebuild."""
        rec = self.by_task.get(task_id)
        if rec is None or not rec.rebuilding:
            return None
        self._drop(rec)
        return rec

    def is_rebuilding(self, task_id: bytes) -> bool:
        rec = self.by_task.get(task_id)
        return rec is not None and rec.rebuilding

    def _drop(self, rec: LineageRecord) -> ReleaseLineage:
        self.by_task.pop(rec.task_id, None)
        for oid in rec.return_ids:
            if self.by_object.get(oid) is rec:
                del self.by_object[oid]
        rec.live.clear()
        return ReleaseLineage(rec)

    # --- checks ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.by_task)

    def validate(self) -> None:
        """Check the invariants (tests switch this on)."""
        for oid, rec in self.by_object.items():
            assert self.by_task.get(rec.task_id) is rec, oid
            assert oid in rec.live and oid in rec.return_ids, oid
        for task_id, rec in self.by_task.items():
            assert rec.task_id == task_id
            assert rec.live or rec.rebuilding, rec
            for oid in rec.live:
                assert self.by_object.get(oid) is rec, oid
