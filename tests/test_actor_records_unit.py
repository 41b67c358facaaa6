"""A node's actor records reach etcd in the order of the actor's states (no sockets).

Regression (review rev10): the writer took snapshots of the records and several
write tasks ran at once, so a PENDING snapshot whose put waited on etcd could land
after the ALIVE one: the record stayed PENDING and callers on other nodes, which
find the actor through it, waited forever."""

from __future__ import annotations

import asyncio

import pytest

from actorcore._node._actors import ActorService
from actorcore._node._lifecycle import Persist

pytestmark = pytest.mark.timeout(10)


class _Table:
    def __init__(self) -> None:
        self.stored: dict[bytes, str] = {}
        self.writing = 0
        self.most = 0
        self.gate = asyncio.Event()

    async def put(self, rec: dict) -> None:
        self.writing += 1
        self.most = max(self.most, self.writing)
        await self.gate.wait()  # etcd is slow
        self.stored[rec["id"]] = rec["state"]
        self.writing -= 1


class _State:
    def __init__(self) -> None:
        self.states: dict[bytes, str] = {}

    def actor_record(self, actor_id: bytes) -> dict | None:
        state = self.states.get(actor_id)
        return None if state is None else {"id": actor_id, "state": state}


async def test_the_latest_state_is_written_last_one_put_at_a_time():
    state, table = _State(), _Table()
    svc = ActorService(state, None, lambda ev: None, table, None)  # type: ignore[arg-type]
    for aid in (b"a", b"b"):
        state.states[aid] = "PENDING"
        svc.persist(Persist(aid))
    await asyncio.sleep(0.01)  # the writer is blocked on its first put
    state.states[b"a"] = "ALIVE"  # constructed meanwhile
    svc.persist(Persist(b"a"))
    state.states[b"b"] = "ALIVE"
    svc.persist(Persist(b"b"))
    await asyncio.sleep(0.01)  # (a second writer would start now and overtake the first)
    table.gate.set()
    for _ in range(200):
        if table.stored == {b"a": "ALIVE", b"b": "ALIVE"} and not table.writing:
            break
        await asyncio.sleep(0.005)
    assert table.stored == {b"a": "ALIVE", b"b": "ALIVE"}
    assert table.most == 1
