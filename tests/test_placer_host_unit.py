"""The placer's shell in a node daemon, without sockets: spill requests answered by
node, held work placed when a node joins, a repeated work id answered once, waiters
failed over when the placer moves, placement-group instructions handed on."""

from __future__ import annotations

import asyncio

import pytest
from actorcore.scheduler import placer_msgs as M

from actorcore import _protocol as P
from actorcore._placer_service import PlacerHost, PlacerMovedError, strategy_from_wire

pytestmark = pytest.mark.timeout(10)

A, B, T = b"a" * 16, b"b" * 16, b"t" * 16


def _host() -> PlacerHost:
    live = {A: {"resources": {"CPU": 1.0, "memory": 1e9}}, B: {"resources": {"CPU": 1.0}}}
    return PlacerHost(live)


def _report(node: bytes, seq: int, cpu: float) -> P.PlacerReportMsg:
    return P.PlacerReportMsg(node, seq, {"CPU": cpu}, {"CPU": 1.0}, 0, 0.0)


def test_spills_go_to_a_node_with_room_and_wait_while_none_has():
    async def main() -> None:
        h = _host()
        h.report(_report(A, 1, 0.0))
        assert await h.place(b"w1", {"CPU": 1.0}, M.DEFAULT, {}, A) == B
        h.report(_report(B, 1, 0.0))  # both busy now
        held = h.place(b"w2", {"CPU": 1.0}, M.DEFAULT, {}, A)
        again = h.place(b"w2", {"CPU": 1.0}, M.DEFAULT, {}, A)  # its sender asks again
        assert held.cancelled() and not again.done()
        h.report(_report(A, 2, 1.0))
        assert await again == A  # one answer, once a node has room
        assert h.statistics()["spilled"] == 2

    asyncio.run(main())


def test_infeasible_work_waits_for_a_fitting_node_and_a_moved_placer_fails_waiters():
    async def main() -> None:
        h = _host()
        tpu = h.place(b"w", {"tpu": 1.0}, M.DEFAULT, {}, A)
        other = h.place(b"x", {"gpu": 1.0}, M.DEFAULT, {}, A)
        await asyncio.sleep(0)
        assert not tpu.done()
        h.node_joined(T, {"resources": {"CPU": 1.0, "tpu": 1.0}})
        assert await tpu == T
        h.close()
        with pytest.raises(PlacerMovedError):
            await other
        with pytest.raises(PlacerMovedError):
            await h.place(b"y", {"CPU": 1.0}, M.DEFAULT, {}, A)

    asyncio.run(main())


def test_hard_affinity_to_a_dead_node_fails_and_group_instructions_go_to_the_carrier():
    async def main() -> None:
        h = _host()
        h.placer.handle(M.Tick(h.placer.now + 10.0))  # warm: judging "unknown" is allowed
        with pytest.raises(ValueError, match="hard affinity"):
            await h.place(b"w", {"CPU": 1.0}, strategy_from_wire([b"z" * 16, False]), {}, A)
        got: list = []
        h.group_carrier = got.append
        h.feed(M.PlacementGroupRequest(b"pg", ({"CPU": 1.0}, {"CPU": 1.0}), "STRICT_SPREAD"))
        prepares = [i for i in got if isinstance(i, M.Prepare)]
        assert {p.node_id for p in prepares} == {A, B}

    asyncio.run(main())


def test_strategies_on_the_wire():
    assert strategy_from_wire("SPREAD") == M.SPREAD
    assert strategy_from_wire("DEFAULT") == M.DEFAULT
    assert strategy_from_wire([A, True]) == M.NodeAffinity(A, True)
