"""The local scheduler: a synchronous state machine, no I/O.

It accounts the node's resources, keeps the queue of lease requests (a worker
for a resource shape, to run tasks) and of actor placements, and decides which
worker serves what. The node daemon feeds it events and carries out the
instructions it returns: start a worker, grant a lease, host an actor, ask an
owner to give a lease back, stop an idle worker, warn about infeasible work.

Worker roles: IDLE (pooled), LEASED (running an owner's tasks), DEDICATED
(hosting one actor that holds resources), SHARED (hosting many actors that
hold none). A worker blocked in ``get`` gives its lease's resources back until
it unblocks, so nested waits cannot starve the node.

Runtime environments: a request whose shape carries ``runtime_env:<hash>``
(see ``actorcore._runtime_env``) is served only by a worker started for that
environment; every worker belongs to exactly one (``""``: the default), so a
worker never serves two environments. Only default workers are kept warm;
idle workers of an environment are reaped after the idle timeout, and stopped
earlier when the node is at ``max_workers`` and another environment needs one.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from . import _resources as R
from ._bundles import BundleHolds
from ._instructions import (
    GrantLease,
    HostActor,
    Infeasible,
    Instruction,
    RevokeLease,
    StartWorker,
    StopWorker,
)
from ._placement import GroupInfeasible, PlacementGroupReady, PlacementGroups, ResourceChange

__all__ = [
    "GrantLease",
    "HostActor",
    "Infeasible",
    "LocalScheduler",
    "PlacementGroupReady",
    "RevokeLease",
    "StartWorker",
    "StopWorker",
    "WorkerRole",
]


class WorkerRole(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    LEASED = "leased"
    DEDICATED = "dedicated"
    SHARED = "shared"


@dataclass(slots=True)
class WorkerInfo:
    worker_id: bytes
    role: WorkerRole = WorkerRole.STARTING
    shape: dict[str, float] = field(default_factory=dict)  # resources held
    owner: Any = None  # lease holder
    blocked: int = 0
    revoked: bool = False
    actors: set[bytes] = field(default_factory=set)
    idle_since: float = 0.0
    env: str = ""  # the runtime environment it was started with ("" = default)


@dataclass(slots=True)
class LeaseRequest:
    key: Any
    shape: dict[str, float]
    owner: Any
    warned: bool = False
    env: str = ""


@dataclass(slots=True)
class ActorRequest:
    actor_id: bytes
    shape: dict[str, float]
    warned: bool = False
    env: str = ""


class LocalScheduler:
    """Resource accounting and placement for one node."""

    def __init__(
        self,
        total: dict[str, float],
        *,
        max_shared_workers: int = 1,
        actors_per_shared_worker: int = 2000,
        max_workers: int = 256,
    ) -> None:
        self.total = dict(total)
        self.available = dict(total)
        self.workers: dict[bytes, WorkerInfo] = {}
        self.leases: deque[LeaseRequest] = deque()
        self.actor_queue: deque[ActorRequest] = deque()
        self.max_shared_workers = max(1, max_shared_workers)
        self.actors_per_shared_worker = actors_per_shared_worker
        self.max_workers = max_workers
        self.starting = 0
        self.starting_env: dict[str, int] = {}  # workers starting, by runtime env
        self.actor_worker: dict[bytes, bytes] = {}
        self.placement = PlacementGroups()
        self.bundles = BundleHolds()  # bundles of cluster-wide groups (two-phase)

    # --- placement groups ---------------------------------------------------------------

    def create_placement_group(
        self, pg_id: bytes, bundles: list[dict[str, float]], strategy: str = "PACK", name: str = ""
    ) -> list[Instruction]:
        """Reserve bundles together; PlacementGroupReady once they are held."""
        self.placement.create(pg_id, bundles, strategy, name)
        return self._schedule()

    def remove_placement_group(self, pg_id: bytes) -> list[Instruction]:
        """End a group: stop the work running in it and give its resources back."""
        change = self.placement.remove(pg_id)
        out = self._apply_change(change) if change is not None else []
        return out + self._schedule()

    # --- bundles of cluster-wide groups (two-phase; see _bundles) ---------------------

    def prepare_bundles(
        self, pg_id: bytes, attempt: int, bundles: list[tuple[int, dict[str, float]]], by: Any
    ) -> tuple[bool, list[Instruction]]:
        """Hold bundles of a group (not usable yet); False: they do not fit now."""
        change = self.bundles.prepare(pg_id, attempt, bundles, self.available, by)
        if change is None:
            return False, []
        return True, self._apply_change(change)

    def commit_bundles(self, pg_id: bytes, attempt: int) -> tuple[bool, list[Instruction]]:
        """Offer the bundles prepared for ``attempt``; False: none are held."""
        change = self.bundles.commit(pg_id, attempt)
        if change is None:
            return False, []
        return True, self._apply_change(change) + self._schedule()

    def release_bundles(
        self, pg_id: bytes, indexes: list[int] | None = None, coordinator: Any = None
    ) -> list[Instruction]:
        """Give back a group's bundles (``indexes`` None: all), stopping the work in
        them; or, with ``coordinator``, the prepared bundles it asked for."""
        if coordinator is not None:
            changes = self.bundles.coordinator_gone(coordinator)
        else:
            one = self.bundles.release(pg_id, indexes or ())
            changes = [one] if one is not None else []
        out: list[Instruction] = []
        for ch in changes:
            out += self._apply_change(ch)
        return out + self._schedule() if changes else out

    def _apply_change(self, ch: ResourceChange) -> list[Instruction]:
        out: list[Instruction] = []
        if ch.withdraws:
            gone = {k for k, v in ch.offer.items() if v < 0}
            for w in list(self.workers.values()):
                held = w.role in (WorkerRole.LEASED, WorkerRole.DEDICATED)
                if held and any(k in gone for k in w.shape):
                    # give its share back now; its death (which follows) reports its actors
                    self._release(w)
                    out.append(StopWorker(w.worker_id))
        R.subtract(self.available, ch.reserve)
        R.add(self.total, ch.offer)
        R.add(self.available, ch.offer)
        for k in [k for k, v in self.total.items() if k in ch.offer and abs(v) < 1e-9]:
            del self.total[k]
            self.available.pop(k, None)
        return out

    # --- events ------------------------------------------------------------------------

    def request_lease(self, key: Any, shape: dict[str, float], owner: Any) -> list[Instruction]:
        shape, env = R.split_runtime_env(R.normalize(shape))
        req = LeaseRequest(key, shape, owner, env=env)
        self.leases.append(req)
        return self._schedule()

    def cancel_lease_request(self, key: Any) -> list[Instruction]:
        self.leases = deque(r for r in self.leases if r.key != key)
        return self._schedule()

    def return_lease(self, worker_id: bytes, now: float = 0.0) -> list[Instruction]:
        w = self.workers.get(worker_id)
        if w is None or w.role is not WorkerRole.LEASED:
            return []
        self._release(w)
        w.role = WorkerRole.IDLE
        w.owner = None
        w.revoked = False
        w.idle_since = now
        return self._schedule()

    def worker_started(
        self, worker_id: bytes, now: float = 0.0, env: str = ""
    ) -> list[Instruction]:
        self._started(env)
        self.workers[worker_id] = WorkerInfo(worker_id, WorkerRole.IDLE, idle_since=now, env=env)
        return self._schedule()

    def worker_start_failed(self, env: str = "") -> list[Instruction]:
        self._started(env)
        return []

    def _started(self, env: str) -> None:
        self.starting = max(0, self.starting - 1)
        n = self.starting_env.get(env, 0) - 1
        if n > 0:
            self.starting_env[env] = n
        else:
            self.starting_env.pop(env, None)

    def worker_died(self, worker_id: bytes) -> tuple[list[bytes], list[Instruction]]:
        """Returns the actors that were on the worker, and instructions."""
        w = self.workers.pop(worker_id, None)
        if w is None:
            return [], self._schedule()
        if w.role in (WorkerRole.LEASED, WorkerRole.DEDICATED):
            self._release(w)
        for a in w.actors:
            self.actor_worker.pop(a, None)
        return sorted(w.actors), self._schedule()

    def worker_blocked(self, worker_id: bytes, blocked: bool) -> list[Instruction]:
        w = self.workers.get(worker_id)
        if w is None or w.role not in (WorkerRole.LEASED, WorkerRole.DEDICATED):
            return []
        if blocked:
            w.blocked += 1
            if w.blocked == 1:
                R.add(self.available, w.shape)
        elif w.blocked > 0:
            w.blocked -= 1
            if w.blocked == 0:
                R.subtract(self.available, w.shape)
        return self._schedule()

    def place_actor(self, actor_id: bytes, shape: dict[str, float]) -> list[Instruction]:
        shape, env = R.split_runtime_env(R.normalize(shape))
        self.actor_queue.append(ActorRequest(actor_id, shape, env=env))
        return self._schedule()

    def actor_removed(self, actor_id: bytes) -> list[Instruction]:
        """An actor ended. A dedicated worker is stopped; a shared one keeps serving."""
        self.actor_queue = deque(a for a in self.actor_queue if a.actor_id != actor_id)
        wid = self.actor_worker.pop(actor_id, None)
        out: list[Instruction] = []
        w = self.workers.get(wid) if wid else None
        if w is not None:
            w.actors.discard(actor_id)
            if w.role is WorkerRole.DEDICATED:
                self._release(w)
                del self.workers[w.worker_id]
                out.append(StopWorker(w.worker_id))
        return out + self._schedule()

    def owner_gone(self, owner: Any) -> list[Instruction]:
        self.leases = deque(r for r in self.leases if r.owner != owner)
        out: list[Instruction] = []
        for w in list(self.workers.values()):
            if w.role is WorkerRole.LEASED and w.owner == owner:
                # its tasks may still be running: stop the worker rather than reuse it
                self._release(w)
                del self.workers[w.worker_id]
                out.append(StopWorker(w.worker_id))
        return out + self._schedule()

    def keep_warm(self, n: int) -> list[Instruction]:
        """Start default workers until ``n`` are idle or starting (dead ones are replaced)."""
        idle = sum(1 for w in self.workers.values() if w.role is WorkerRole.IDLE and not w.env)
        missing = n - idle - self.starting_env.get("", 0)
        live = len(self.workers) + self.starting
        missing = min(missing, self.max_workers - live)
        if missing <= 0:
            return []
        self._starting("", missing)
        return [StartWorker(missing)]

    def _starting(self, env: str, n: int) -> None:
        self.starting += n
        self.starting_env[env] = self.starting_env.get(env, 0) + n

    def reap_idle(self, now: float, idle_timeout: float, keep: int) -> list[Instruction]:
        """Stop workers idle for longer than ``idle_timeout``, keeping ``keep`` default ones;
        also shared actor hosts left without actors for that long."""
        out: list[Instruction] = []
        for w in list(self.workers.values()):
            if w.role is not WorkerRole.SHARED or w.actors:
                continue
            if w.idle_since < 0:
                w.idle_since = now  # first seen empty
            elif now - w.idle_since > idle_timeout:
                del self.workers[w.worker_id]
                out.append(StopWorker(w.worker_id))
        idle = sorted(
            (w for w in self.workers.values() if w.role is WorkerRole.IDLE),
            key=lambda w: (not w.env, w.idle_since),  # runtime-env workers are never kept
        )
        plain = sum(1 for w in idle if not w.env)
        for w in idle[: max(0, len(idle) - min(keep, plain))]:
            if now - w.idle_since > idle_timeout:
                del self.workers[w.worker_id]
                out.append(StopWorker(w.worker_id))
        return out

    # --- matching ----------------------------------------------------------------------

    def _release(self, w: WorkerInfo) -> None:
        if not w.blocked:
            R.add(self.available, w.shape)
        w.blocked = 0
        w.shape = {}

    def _take(self, w: WorkerInfo, shape: dict[str, float]) -> None:
        R.subtract(self.available, shape)
        w.shape = dict(shape)

    def _idle_worker(self, env: str = "") -> WorkerInfo | None:
        for w in self.workers.values():
            if w.role is WorkerRole.IDLE and w.env == env:
                return w
        return None

    def _schedule(self) -> list[Instruction]:
        out: list[Instruction] = []
        for r in self.placement.reserve(self.total, self.available):
            if isinstance(r, ResourceChange):
                out += self._apply_change(r)
            elif isinstance(r, GroupInfeasible):
                out.append(Infeasible(r.pg_id, r.missing))
            else:
                out.append(r)
        want: dict[str, int] = {}
        self._schedule_actors(out, want)
        self._schedule_leases(out, want)
        return out + self._start_workers(want)

    def _schedule_actors(self, out: list[Instruction], want: dict[str, int]) -> None:
        need_host: set[str] = set()  # one new shared host (per env) takes every light actor
        for req in list(self.actor_queue):
            env = req.env
            if R.is_empty(req.shape):
                w = None if env in need_host else self._shared_worker(env)
                if w is None:
                    if env not in need_host:
                        need_host.add(env)
                        want[env] = want.get(env, 0) + 1
                    continue
            else:
                if not self._feasible(req, out):
                    continue
                if not R.fits(self.available, req.shape):
                    continue
                w = self._idle_worker(env)
                if w is None:
                    want[env] = want.get(env, 0) + 1
                    continue
                w.role = WorkerRole.DEDICATED
                self._take(w, req.shape)
            w.actors.add(req.actor_id)
            w.idle_since = -1.0  # hosting (a shared host's empty time starts when it empties)
            self.actor_worker[req.actor_id] = w.worker_id
            self.actor_queue.remove(req)
            out.append(HostActor(req.actor_id, w.worker_id))

    def _shared_worker(self, env: str = "") -> WorkerInfo | None:
        """Spread light actors over up to ``max_shared_workers`` hosts (per runtime env),
        then pack them."""
        shared = [w for w in self.workers.values() if w.role is WorkerRole.SHARED and w.env == env]
        open_ = [w for w in shared if len(w.actors) < self.actors_per_shared_worker]
        if len(shared) < self.max_shared_workers or not open_:
            w = self._idle_worker(env)
            if w is not None:
                w.role = WorkerRole.SHARED
                return w
        if open_:
            return min(open_, key=lambda x: len(x.actors))
        return None

    def _schedule_leases(self, out: list[Instruction], want: dict[str, int]) -> None:
        blocked_owners: set[Any] = set()
        for req in list(self.leases):
            if not self._feasible(req, out):
                continue
            if not R.fits(self.available, req.shape):
                blocked_owners.add(req.owner)
                continue
            w = self._idle_worker(req.env)
            if w is None:
                want[req.env] = want.get(req.env, 0) + 1
                continue
            w.role = WorkerRole.LEASED
            w.owner = req.owner
            self._take(w, req.shape)
            self.leases.remove(req)
            out.append(GrantLease(req.key, w.worker_id))
        if blocked_owners:
            out.extend(self._revocations(blocked_owners))

    def _revocations(self, waiting_owners: set[Any]) -> list[Instruction]:
        out: list[Instruction] = []
        for w in self.workers.values():
            if w.role is WorkerRole.LEASED and not w.revoked and not w.blocked:
                if any(o != w.owner for o in waiting_owners):
                    w.revoked = True
                    out.append(RevokeLease(w.worker_id, w.owner))
        return out

    def _feasible(self, req: LeaseRequest | ActorRequest, out: list[Instruction]) -> bool:
        miss = R.missing(self.total, req.shape)
        if not miss:
            return True
        if not req.warned:
            req.warned = True
            key = req.key if isinstance(req, LeaseRequest) else req.actor_id
            out.append(Infeasible(key, miss))
        return False

    def _start_workers(self, want: dict[str, int]) -> list[Instruction]:
        out: list[Instruction] = []
        for env, n in want.items():
            need = n - self.starting_env.get(env, 0)
            if need <= 0:
                continue
            room = self.max_workers - len(self.workers) - self.starting
            if room < need:
                out += self._evict_idle(env, need - room)
                room = self.max_workers - len(self.workers) - self.starting
            need = min(need, room)
            if need > 0:
                self._starting(env, need)
                out.append(StartWorker(need, env))
        return out

    def _evict_idle(self, env: str, n: int) -> list[Instruction]:
        """Stop up to ``n`` idle workers of other runtime envs (oldest first) to make room."""
        idle = sorted(
            (w for w in self.workers.values() if w.role is WorkerRole.IDLE and w.env != env),
            key=lambda w: w.idle_since,
        )
        out: list[Instruction] = []
        for w in idle[:n]:
            del self.workers[w.worker_id]
            out.append(StopWorker(w.worker_id))
        return out

    # --- views ------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        out = {r.value: 0 for r in WorkerRole}
        for w in self.workers.values():
            out[w.role.value] += 1
        out["starting"] = self.starting
        return out

    def validate(self) -> None:
        assert sum(self.starting_env.values()) == self.starting, (self.starting_env, self.starting)
        used: dict[str, float] = {}
        for w in self.workers.values():
            if w.role in (WorkerRole.LEASED, WorkerRole.DEDICATED) and not w.blocked:
                R.add(used, w.shape)
            if w.role in (WorkerRole.IDLE, WorkerRole.SHARED):
                assert not w.shape, f"{w.role} worker holds resources"
        R.add(used, self.placement.reserved())
        R.add(used, self.bundles.reserved())
        for k, total in self.total.items():
            expect = total - used.get(k, 0.0)
            assert abs(self.available.get(k, 0.0) - expect) < 1e-6, (k, self.available, used)
