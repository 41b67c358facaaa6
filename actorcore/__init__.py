"""actorcore: an asyncio-native framework that scales Python from one process to a cluster.

Tasks (``@ac.remote`` functions) and actors (``@ac.remote`` classes) run in
worker processes; values travel through a shared-memory object store; the
same code runs in a plain script (``ac.get``) or inside a running event loop
(``await ref``).
"""

import logging as _logging

from . import errors, util
from ._api import (
    RuntimeContext,
    as_completed,
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    get_runtime_context,
    init,
    is_initialized,
    kill,
    memory_summary,
    nodes,
    put,
    shutdown,
    wait,
)
from ._obs.timeline import timeline
from ._ref import ObjectRef
from ._remote import ActorClass, ActorHandle, ActorMethod, RemoteFunction, method, remote

__all__ = [
    "ActorClass",
    "ActorHandle",
    "ActorMethod",
    "ObjectRef",
    "RemoteFunction",
    "RuntimeContext",
    "as_completed",
    "available_resources",
    "cancel",
    "cluster_resources",
    "errors",
    "get",
    "get_actor",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "memory_summary",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "timeline",
    "util",
    "wait",
]

__version__ = "0.1.0"

_logging.getLogger(__name__).addHandler(_logging.NullHandler())
