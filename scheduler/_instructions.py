"""What the local scheduler asks of the node: plain values, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._placement import PlacementGroupReady

__all__ = [
    "GrantLease",
    "HostActor",
    "Infeasible",
    "Instruction",
    "RevokeLease",
    "StartWorker",
    "StopWorker",
]


@dataclass(frozen=True, slots=True)
class StartWorker:
    """Start ``count`` more worker processes (with runtime environment ``env``: its hash)."""

    count: int
    env: str = ""


@dataclass(frozen=True, slots=True)
class GrantLease:
    """Answer the lease request ``key`` with worker ``worker_id``."""

    key: Any
    worker_id: bytes


@dataclass(frozen=True, slots=True)
class HostActor:
    """The actor goes on worker ``worker_id`` (for the actor lifecycle)."""

    actor_id: bytes
    worker_id: bytes


@dataclass(frozen=True, slots=True)
class RevokeLease:
    """Ask the lease holder ``owner`` to give ``worker_id`` back (others wait)."""

    worker_id: bytes
    owner: Any


@dataclass(frozen=True, slots=True)
class StopWorker:
    """Kill the worker (its resources are already given back)."""

    worker_id: bytes


@dataclass(frozen=True, slots=True)
class Infeasible:
    """Work ``key`` asks for more than the node has (``missing``); warned once."""

    key: Any
    missing: dict[str, float]


Instruction = (
    StartWorker
    | GrantLease
    | HostActor
    | RevokeLease
    | StopWorker
    | Infeasible
    | PlacementGroupReady
)
