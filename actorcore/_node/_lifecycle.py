"""The actor lifecycle, as the node daemon keeps it: a synchronous state machine.

PENDING -> ALIVE -> (RESTARTING -> ALIVE)* -> DEAD. The machine takes events
(created, placed, constructed, construction failed, worker died, kill, owner
gone) and returns instructions for the daemon: place, host, unhost, tell the
scheduler, persist the record, wake callers waiting for an address, release
the name. One method, :meth:`ActorLifecycle._set_phase`, changes phases and
rejects illegal moves.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ActorInfo",
    "ActorLifecycle",
    "ActorPhase",
    "Host",
    "Notify",
    "Persist",
    "Place",
    "ReleaseName",
    "Removed",
    "Unhost",
]


# an actor whose worker dies before the actor is constructed is placed again this many
# times before that counts as its death (or restart): an __init__ that kills its worker
# still ends it
HOST_LOSS_RETRIES = 1


class ActorPhase(enum.Enum):
    PENDING = "PENDING"
    ALIVE = "ALIVE"
    RESTARTING = "RESTARTING"
    DEAD = "DEAD"


_LEGAL = {
    ActorPhase.PENDING: {ActorPhase.ALIVE, ActorPhase.DEAD, ActorPhase.RESTARTING},
    ActorPhase.ALIVE: {ActorPhase.RESTARTING, ActorPhase.DEAD},
    ActorPhase.RESTARTING: {ActorPhase.ALIVE, ActorPhase.DEAD, ActorPhase.RESTARTING},
    ActorPhase.DEAD: set(),
}


@dataclass(slots=True)
class ActorInfo:
    actor_id: bytes
    class_name: str
    spec: dict[str, Any]
    owner: bytes
    shape: dict[str, float] = field(default_factory=dict)
    name: str | None = None
    namespace: str = "default"
    detached: bool = False
    max_restarts: int = 0
    restarts: int = 0
    epoch: int = 0
    phase: ActorPhase = ActorPhase.PENDING
    worker_id: bytes | None = None
    address: list[Any] | None = None
    death_cause: str | None = None
    host_losses: int = 0  # workers that died before this incarnation was constructed


# --- instructions ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Place:
    actor_id: bytes
    shape: dict[str, float]


@dataclass(frozen=True, slots=True)
class Host:
    actor_id: bytes
    worker_id: bytes


@dataclass(frozen=True, slots=True)
class Unhost:
    """Take the actor off its worker (drop it from a shared worker)."""

    actor_id: bytes
    worker_id: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Removed:
    """Tell the scheduler the actor no longer occupies its worker."""

    actor_id: bytes


@dataclass(frozen=True, slots=True)
class Persist:
    actor_id: bytes


@dataclass(frozen=True, slots=True)
class Notify:
    actor_id: bytes


@dataclass(frozen=True, slots=True)
class ReleaseName:
    namespace: str
    name: str
    actor_id: bytes


Instruction = Place | Host | Unhost | Removed | Persist | Notify | ReleaseName


class ActorLifecycle:
    """Every actor of this node and the phase it is in."""

    def __init__(self) -> None:
        self.actors: dict[bytes, ActorInfo] = {}

    def _set_phase(self, a: ActorInfo, new: ActorPhase) -> None:
        if new not in _LEGAL[a.phase]:
            raise AssertionError(f"actor {a.actor_id.hex()}: illegal {a.phase.name} -> {new.name}")
        a.phase = new

    # --- events ---------------------------------------------------------------------

    def created(self, info: ActorInfo) -> list[Instruction]:
        if info.actor_id in self.actors:
            raise ValueError(f"actor {info.actor_id.hex()} exists already")
        self.actors[info.actor_id] = info
        return [Persist(info.actor_id), Place(info.actor_id, info.shape)]

    def placed(self, actor_id: bytes, worker_id: bytes) -> list[Instruction]:
        a = self.actors.get(actor_id)
        if a is None or a.phase is ActorPhase.DEAD:
            return [Removed(actor_id)]
        a.worker_id = worker_id
        return [Host(actor_id, worker_id)]

    def constructed(
        self, actor_id: bytes, worker_id: bytes, address: list[Any]
    ) -> list[Instruction]:
        a = self.actors.get(actor_id)
        if a is None or a.phase is ActorPhase.DEAD or a.worker_id != worker_id:
            return [
                Unhost(actor_id, worker_id, "the actor was killed while starting"),
                Removed(actor_id),
            ]
        self._set_phase(a, ActorPhase.ALIVE)
        a.address = address
        a.host_losses = 0
        return [Persist(actor_id), Notify(actor_id)]

    def construction_failed(
        self, actor_id: bytes, worker_id: bytes, cause: str
    ) -> list[Instruction]:
        a = self.actors.get(actor_id)
        if a is None or a.worker_id != worker_id or a.phase is ActorPhase.DEAD:
            return [Removed(actor_id)]
        return [Removed(actor_id), *self._die(a, f"__init__ failed: {cause}")]

    def worker_died(self, actor_ids: list[bytes], why: str) -> list[Instruction]:
        out: list[Instruction] = []
        for actor_id in actor_ids:
            a = self.actors.get(actor_id)
            if a is None or a.phase is ActorPhase.DEAD:
                continue
            a.worker_id = None
            a.address = None
            if a.phase is not ActorPhase.ALIVE and a.host_losses < HOST_LOSS_RETRIES:
                # not constructed yet: it was placed on a worker that was dying (its death
                # not seen here yet) or died meanwhile; placed again, not a restart
                a.host_losses += 1
                out.append(Place(a.actor_id, a.shape))
                continue
            out += self._restart_or_die(a, why)
        return out

    def kill(self, actor_id: bytes, no_restart: bool) -> list[Instruction]:
        a = self.actors.get(actor_id)
        if a is None or a.phase is ActorPhase.DEAD:
            return []
        out: list[Instruction] = []
        if a.worker_id is not None:
            out += [Unhost(actor_id, a.worker_id, "killed"), Removed(actor_id)]
            a.worker_id = None
            a.address = None
        elif a.phase is ActorPhase.PENDING:
            out.append(Removed(actor_id))  # drop it from the placement queue
        if no_restart:
            return out + self._die(a, "killed by ac.kill()")
        return out + self._restart_or_die(a, "killed by ac.kill(no_restart=False)")

    def owner_gone(self, owner: bytes) -> list[Instruction]:
        out: list[Instruction] = []
        for a in list(self.actors.values()):
            if a.owner == owner and not a.detached and a.phase is not ActorPhase.DEAD:
                out += self.kill(a.actor_id, no_restart=True)
                a.death_cause = "its owner (the process that created it) exited"
        return out

    def _restart_or_die(self, a: ActorInfo, why: str) -> list[Instruction]:
        if a.max_restarts == -1 or a.restarts < a.max_restarts:
            a.restarts += 1
            a.epoch += 1
            self._set_phase(a, ActorPhase.RESTARTING)
            return [Persist(a.actor_id), Place(a.actor_id, a.shape)]
        return self._die(a, why)

    def _die(self, a: ActorInfo, why: str) -> list[Instruction]:
        self._set_phase(a, ActorPhase.DEAD)
        a.death_cause = why
        a.worker_id = None
        a.address = None
        out: list[Instruction] = [Persist(a.actor_id), Notify(a.actor_id)]
        if a.name:
            out.append(ReleaseName(a.namespace, a.name, a.actor_id))
        return out

    # --- views ---------------------------------------------------------------------

    def where(self, actor_id: bytes, min_epoch: int) -> list[Any] | None:
        """``[phase, address, epoch, cause]`` if a caller waiting for ``min_epoch`` can be
        answered now, else None."""
        a = self.actors.get(actor_id)
        if a is None:
            return ["DEAD", None, 0, "no such actor on this node"]
        if a.phase is ActorPhase.DEAD:
            return ["DEAD", None, a.epoch, a.death_cause]
        if a.phase is ActorPhase.ALIVE and a.epoch >= min_epoch:
            return ["ALIVE", a.address, a.epoch, None]
        return None

    def forget_dead(self, keep: int = 10000) -> None:
        dead = [k for k, a in self.actors.items() if a.phase is ActorPhase.DEAD]
        for k in dead[: max(0, len(dead) - keep)]:
            del self.actors[k]
