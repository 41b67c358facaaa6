"""The shell of lineage (:mod:`._lineage`): what an owner does when a node dies.

:class:`ObjectRecovery` is told of node deaths (the node daemon pushes
``NODE_DIED`` to its processes): the task and actor cores lose what ran on
that node (tasks retried, actor calls failed or retried), the object table
forgets that node's copies, and the objects left without any copy are rebuilt
from lineage or failed with the error that says why. A reader whose pull of
an owned object fails (the node died but nobody said so yet) asks for the
same rebuild. Lineage state is only touched under the runtime's lock.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from .._locations import in_cluster
from .._refcount import PENDING, READY, STORE
from ..errors import ObjectReconstructionFailedError
from . import _object_events as OE
from . import _task_events as E
from ._lineage import FailObject, Lineage, ReleaseLineage, Resubmit

if TYPE_CHECKING:
    from .._runtime import CoreRuntime
    from ._task_state import TaskSpec

__all__ = ["ObjectRecovery"]

logger = logging.getLogger(__name__)


class ObjectRecovery:
    """Lineage of one owner, and its reactions to node deaths."""

    def __init__(self, rt: CoreRuntime) -> None:
        self.rt = rt
        self.core = Lineage()
        self._lock = threading.Lock()  # the lineage core's (never held while calling out)
        self.rebuilt = 0  # rebuilds started (statistics)
        self.failed = 0  # objects failed for good

    def statistics(self) -> dict[str, int]:
        """Rebuilds started, objects failed for good, lineage records kept now."""
        return {"rebuilt": self.rebuilt, "failed": self.failed, "lineage": len(self.core)}

    @property
    def enabled(self) -> bool:
        return in_cluster(self.rt)

    # --- the task shell's hooks (called under the runtime's lock) -------------------------

    def task_done(self, spec: TaskSpec, results: list[Any]) -> bool:
        """A task's results arrived (on the loop); True if it is kept as lineage (its
        arguments are then kept too)."""
        if not self.enabled or spec.stream:
            return False
        table = self.rt.objects.table.entries  # (read on the loop, which owns it)
        live = [
            oid
            for oid, r in zip(spec.return_ids, results, strict=True)
            if r[0] == STORE and oid in table
        ]
        with self._lock:
            if not live and spec.task_id not in self.core.by_task:
                return False
            return self.core.finished(
                spec.task_id,
                spec.name,
                spec,
                spec.return_ids,
                live,
                spec.retries_left,
                spec.lineage_deps,
            )

    def task_failed(self, spec: TaskSpec, err: BaseException) -> BaseException:
        """A task failed; a failed rebuild gets the error that says so."""
        with self._lock:
            failed = self.core.rebuild_failed(spec.task_id)
        if failed is None:
            return err
        wrapped = ObjectReconstructionFailedError(
            f"the objects of task {spec.name} were lost with their node and running it "
            f"again failed: {err}"
        )
        wrapped.__cause__ = err
        return wrapped

    def freed(self, oids: list[bytes]) -> list[Any]:
        """Owned store objects were freed: the lineage records nobody needs go."""
        if not self.core.by_object:
            return []
        with self._lock:
            released = self.core.freed(oids)
        return [ins.record.spec for ins in released]

    # --- losses --------------------------------------------------------------------------

    def node_died(self, node_id: bytes) -> None:
        """Node ``node_id`` left the cluster (any thread)."""
        rt = self.rt
        gone = rt.node_died(node_id)

        def split(table: Any) -> list[bytes]:
            owned = []
            for oid in gone:
                e = table.entries.get(oid)
                if e is None:
                    continue
                if e.owned:
                    owned.append(oid)
                elif e.state == READY and e.kind == STORE:
                    _reset(table, e)  # borrowed: its next reader asks the owner again
            return owned

        owned = self._on_table(split) if gone else []
        if owned:
            logger.info("%d objects lost their last copy with node %s", len(owned), node_id.hex())
            self.lost(owned, f"every copy of it was on node {node_id.hex()}, which died")

    def read_failed(self, e: Any) -> bool:
        """A read of store object ``e`` found no copy: True if the reader is to wait for
        it again. An owned object is rebuilt (or failed for good); a borrowed one is asked
        of its owner again (who may have rebuilt it elsewhere, or be rebuilding it)."""
        if not self.enabled:
            return False
        if e.state != READY or e.kind != STORE:
            return e.state == PENDING
        if not e.owned:

            def again(table: Any) -> bool:
                if table.entries.get(e.oid) is not e or e.state != READY:
                    return e.state == PENDING
                _reset(table, e)  # its next watch asks the owner
                return True

            return bool(self._on_table(again))
        return self.lost([e.oid], "no node could provide a copy of it")

    def _on_table(self, fn: Any) -> Any:
        """``fn(table)`` run by the object core on the runtime's loop; its result."""
        return self.rt.objects.ask(lambda answer: OE.Query(fn, answer))

    def lost(self, oids: list[bytes], why: str) -> bool:
        with self._lock:
            instrs = self.core.lost(oids, why)
        again = [ins.record.spec for ins in instrs if isinstance(ins, Resubmit)]
        for spec in again:  # every lost object pending first: a task rebuilt next waits on
            self._reset(spec)  # its rebuilt arguments, never reads their stale copies
        for spec in again:
            self._resubmit(spec)
        for ins in instrs:
            if isinstance(ins, FailObject):
                self._fail(ins.oid, ins.error)
            elif isinstance(ins, ReleaseLineage):
                self.rt.submitter.release_args(ins.record.spec)
        return bool(instrs)

    def _reset(self, spec: TaskSpec) -> None:
        ids = list(spec.return_ids)

        def reset(table: Any) -> None:
            for oid in ids:
                e = table.entries.get(oid)
                if e is not None and e.state == READY and e.kind == STORE:
                    _reset(table, e)

        self._on_table(reset)

    def _resubmit(self, spec: TaskSpec) -> None:
        self.rebuilt += 1
        logger.info("rebuilding the results of task %s from its lineage", spec.name)
        spec.rid = 0
        spec.lease = None
        spec.cancelled = False
        spec.resolved = []
        spec.args.deps = list(spec.lineage_deps or [])
        self.rt.submitter.post(E.SubmitTask(spec))

    def _fail(self, oid: bytes, err: BaseException) -> None:
        self.failed += 1

        def reset(table: Any) -> None:
            e = table.entries.get(oid)
            if e is not None and e.state != PENDING:
                _reset(table, e)

        self._on_table(reset)
        self.rt.objects.post(OE.ObjectsFailed([oid], err))  # its waiters wake with it


def _reset(table: Any, e: Any) -> None:
    """Back to pending with no known copy (on the loop, inside the object core)."""
    table.reset(e)
    e.locations = None
    e.fetching = False
