"""Control state: what must survive any single process.

Every component reads and writes control state (nodes, actors, names, jobs,
elections) through one interface, :class:`ControlStore`: keys with
revisions, leases, prefix watches and transactions, with etcd's semantics.
Two back ends implement it:

* :class:`EmbeddedControlStore`: in this process, for a single machine;
* :class:`EtcdControlStore`: a real etcd, for clusters
  (``etcd://host:2379/NAME``; every key lives under the namespace NAME).

:func:`open_control_store` picks one from an address. :class:`ActorTable`,
:class:`NameRegistry` and :class:`NodeRegistry` are typed tables on top of
either; :class:`EtcdProcess` runs a throwaway etcd for tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._embedded import EmbeddedControlStore, EmbeddedState
from ._etcd_config import EtcdAddress, EtcdOptions
from ._interface import (
    Compare,
    ControlStore,
    ControlStoreError,
    ControlStoreUnavailableError,
    DeleteOp,
    EventType,
    GetOp,
    KeyValue,
    LeaseExpiredError,
    PutOp,
    RevisionCompactedError,
    TxnResult,
    Watch,
    WatchEvent,
)
from ._retry import RetryingControlStore
from ._tables import ActorRecord, ActorTable, NameRegistry, NodeRegistry

if TYPE_CHECKING:
    from ._etcd import EtcdControlStore
    from ._etcd_process import EtcdCluster, EtcdNotFoundError, EtcdProcess

# The etcd client (aetcd, grpc, protobuf: about 20 MB) loads on first use, so
# that a single machine's processes, which never talk to etcd, do not carry it.
_LAZY = {
    "EtcdCluster": "._etcd_process",
    "EtcdControlStore": "._etcd",
    "EtcdNotFoundError": "._etcd_process",
    "EtcdProcess": "._etcd_process",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "ActorRecord",
    "ActorTable",
    "Compare",
    "ControlStore",
    "ControlStoreError",
    "ControlStoreUnavailableError",
    "DeleteOp",
    "EmbeddedControlStore",
    "EmbeddedState",
    "EtcdAddress",
    "EtcdCluster",
    "EtcdControlStore",
    "EtcdNotFoundError",
    "EtcdOptions",
    "EtcdProcess",
    "EventType",
    "GetOp",
    "KeyValue",
    "LeaseExpiredError",
    "NameRegistry",
    "NodeRegistry",
    "PutOp",
    "RetryingControlStore",
    "RevisionCompactedError",
    "TxnResult",
    "Watch",
    "WatchEvent",
    "open_control_store",
]


def open_control_store(address: str | None = None) -> ControlStore:
    """The control store for ``address``: embedded for None, etcd for ``etcd://...``.

    The result is an async context manager; entering an etcd store checks
    that etcd answers. An etcd store must be created in the event loop that
    uses it.

    Raises:
        ValueError: an address that is neither None nor ``etcd://...``.
    """
    if address is None:
        return EmbeddedControlStore()
    if address.startswith("etcd://"):
        from ._etcd import EtcdControlStore

        return EtcdControlStore(address)
    raise ValueError(f"unknown control store address {address!r}: expected etcd://host:port/NAME")
