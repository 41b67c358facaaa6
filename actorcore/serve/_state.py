"""The replicas of one deployment as a state machine: what to start, drain and stop.

:class:`DeploymentState` takes events (a replica started, failed to start,
died, finished draining; a control tick with the load; a new target) and
returns instructions for the controller to carry out. Replicas move
STARTING -> RUNNING -> DRAINING -> gone; only RUNNING replicas take requests.

Rolling update: when the target version changes, one new replica is started;
once it runs there is one replica too many and an old one is drained; repeat
until none of the old version is left. Requests never lack a replica, and
draining lets the old ones finish what they hold.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from ._autoscale import AutoscalingPolicy
from ._config import DeploymentConfig

__all__ = [
    "DeploymentState",
    "DeploymentStatusKind",
    "DrainReplica",
    "Publish",
    "ReplicaRecord",
    "ReplicaState",
    "StartReplica",
    "StopReplica",
]

MAX_START_FAILURES = 3


class ReplicaState(enum.Enum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    DRAINING = "DRAINING"


class DeploymentStatusKind(enum.Enum):
    UPDATING = "UPDATING"
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    DEPLOY_FAILED = "DEPLOY_FAILED"
    DELETING = "DELETING"


@dataclass(frozen=True, slots=True)
class StartReplica:
    rid: str
    version: str


@dataclass(frozen=True, slots=True)
class DrainReplica:
    rid: str


@dataclass(frozen=True, slots=True)
class StopReplica:
    rid: str


@dataclass(frozen=True, slots=True)
class Publish:
    """The set of RUNNING replicas changed: tell the routers."""


Instruction = StartReplica | DrainReplica | StopReplica | Publish


@dataclass
class ReplicaRecord:
    rid: str
    version: str
    state: ReplicaState
    since: float
    ongoing: int = 0
    info: dict[str, Any] = field(default_factory=dict)


class DeploymentState:
    """The replicas of one deployment and the target they are moved towards."""

    def __init__(self, name: str, version: str, config: DeploymentConfig, now: float) -> None:
        self.name = name
        self.replicas: dict[str, ReplicaRecord] = {}
        self.deleting = False
        self.failures = 0
        self.message = ""
        self._seq = 0
        self.version = version
        self.config = config
        self.target = config.initial_replicas()
        self._policy = self._make_policy(config)
        self._now = now

    @staticmethod
    def _make_policy(config: DeploymentConfig) -> AutoscalingPolicy | None:
        a = config.autoscaling_config
        return AutoscalingPolicy(a) if a is not None else None

    # --- views ---------------------------------------------------------------------------

    def _in(self, *states: ReplicaState) -> list[ReplicaRecord]:
        return [r for r in self.replicas.values() if r.state in states]

    def routable(self) -> list[str]:
        return [r.rid for r in self._in(ReplicaState.RUNNING)]

    def status(self) -> DeploymentStatusKind:
        if self.deleting:
            return DeploymentStatusKind.DELETING
        if self.failures >= MAX_START_FAILURES:
            return DeploymentStatusKind.DEPLOY_FAILED
        running = self._in(ReplicaState.RUNNING)
        current = [r for r in running if r.version == self.version]
        if len(current) == self.target and len(running) == self.target:
            return DeploymentStatusKind.HEALTHY
        if self.failures:
            return DeploymentStatusKind.UNHEALTHY
        return DeploymentStatusKind.UPDATING

    # --- events --------------------------------------------------------------------------

    def set_target(self, version: str, config: DeploymentConfig) -> list[Instruction]:
        """A new version and/or config (``serve.run`` again)."""
        out: list[Instruction] = []
        if version != self.version:
            self.failures = 0
            self.message = ""
            for r in self._in(ReplicaState.STARTING):
                del self.replicas[r.rid]
                out.append(StopReplica(r.rid))
        if config.autoscaling_config != self.config.autoscaling_config:
            self._policy = self._make_policy(config)
            self.target = config.initial_replicas()
        elif self._policy is None or config.autoscaling_config is None:
            self.target = config.initial_replicas()
        self.version, self.config = version, config
        return out + self.reconcile()

    def started(self, rid: str, info: dict[str, Any]) -> list[Instruction]:
        r = self.replicas.get(rid)
        if r is None or r.state is not ReplicaState.STARTING:
            return [StopReplica(rid)]  # no longer wanted
        r.state, r.since, r.info = ReplicaState.RUNNING, self._now, info
        self.failures = 0
        return [Publish(), *self.reconcile()]

    def start_failed(self, rid: str, why: str) -> list[Instruction]:
        r = self.replicas.pop(rid, None)
        if r is None:
            return [StopReplica(rid)]
        if r.version == self.version:
            self.failures += 1
            self.message = f"replica failed to start: {why}"
        return [StopReplica(rid), *self.reconcile()]

    def died(self, rid: str, why: str) -> list[Instruction]:
        """The replica died or failed its health check: replace it."""
        r = self.replicas.pop(rid, None)
        if r is None:
            return []
        self.message = f"replica {rid} replaced: {why}"
        out: list[Instruction] = [StopReplica(rid)]
        if r.state is ReplicaState.RUNNING:
            out.append(Publish())
        return out + self.reconcile()

    def drained(self, rid: str) -> list[Instruction]:
        self.replicas.pop(rid, None)
        return self.reconcile()

    def delete(self) -> list[Instruction]:
        self.deleting = True
        self.target = 0
        out: list[Instruction] = []
        for r in self._in(ReplicaState.STARTING):
            del self.replicas[r.rid]
            out.append(StopReplica(r.rid))
        return out + self.reconcile()

    def tick(self, now: float, ongoing: dict[str, int]) -> list[Instruction]:
        """The periodic look at the load (``ongoing``: requests held per replica)."""
        self._now = now
        for rid, n in ongoing.items():
            r = self.replicas.get(rid)
            if r is not None:
                r.ongoing = n
        if self._policy is not None and not self.deleting:
            running = self._in(ReplicaState.RUNNING)
            total = sum(r.ongoing for r in running)
            self.target = self._policy.decide(now, self.target, total)
        return self.reconcile()

    # --- the decision --------------------------------------------------------------------

    def _start(self, n: int) -> list[Instruction]:
        out: list[Instruction] = []
        for _ in range(n):
            self._seq += 1
            rid = f"{self.name}#{self._seq}-{self.version[:6]}"
            self.replicas[rid] = ReplicaRecord(rid, self.version, ReplicaState.STARTING, self._now)
            out.append(StartReplica(rid, self.version))
        return out

    def reconcile(self) -> list[Instruction]:
        """Start, or drain, replicas to move towards the target."""
        running = self._in(ReplicaState.RUNNING)
        starting = self._in(ReplicaState.STARTING)
        out: list[Instruction] = []
        if self.failures < MAX_START_FAILURES and not self.deleting:
            live = len(running) + len(starting)
            old = [r for r in running if r.version != self.version]
            if live < self.target:
                # after a failure, try one at a time
                out += self._start(1 if self.failures else self.target - live)
            elif old and not starting and len(running) <= self.target:
                out += self._start(1)  # rolling update: one more, then one old out
        excess = len(running) - self.target
        if excess > 0 and (not starting or self.deleting):
            victims = sorted(
                running, key=lambda r: (r.version == self.version, r.ongoing, -r.since)
            )
            for r in victims[:excess]:
                r.state = ReplicaState.DRAINING
                out.append(DrainReplica(r.rid))
            out.append(Publish())
        return out

    def validate(self) -> None:
        """Invariants (tests call this)."""
        assert all(r.rid == k for k, r in self.replicas.items())
        assert len(self._in(ReplicaState.STARTING)) <= max(self.target, 1) + 1 or self.failures
