"""Serving chunks to other nodes: the sending node's sans-IO budget.

Every chunk a peer asks for is queued per peer; chunks are granted round-robin
over the peers while the bytes being sent stay within ``window_bytes``, so a
node pulled by many at once keeps a bounded amount of data in flight (and one
greedy peer cannot starve the others). The shell sends a granted chunk straight
from its mapping of the arena and reports when it went out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PeerGoneEvent",
    "ReadAskedEvent",
    "ReadSentEvent",
    "RefuseRead",
    "SendChunk",
    "ServeConfig",
    "ServeState",
]

MiB = 1 << 20
Peer = Hashable


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Attributes:
    window_bytes: bytes being sent at once to all peers (the serve budget).
    peer_window_bytes: bytes being sent at once to one peer, so that a peer
        that stops reading holds at most this much of the budget.
    max_read_bytes: the largest chunk a peer may ask for.
    """

    window_bytes: int = 128 * MiB
    peer_window_bytes: int = 32 * MiB
    max_read_bytes: int = 16 * MiB

    def __post_init__(self) -> None:
        if not 0 < self.max_read_bytes <= self.peer_window_bytes <= self.window_bytes:
            raise ValueError("need 0 < max_read_bytes <= peer_window_bytes <= window_bytes")


@dataclass(frozen=True, slots=True)
class ReadAskedEvent:
    """``peer`` asks for ``length`` bytes of ``oid`` from ``offset`` (request ``rid``)."""

    peer: Peer
    rid: int
    oid: bytes
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class ReadSentEvent:
    """The chunk of request ``rid`` went out to ``peer``."""

    peer: Peer
    rid: int


@dataclass(frozen=True, slots=True)
class PeerGoneEvent:
    """``peer``'s connection ended: forget what it asked for."""

    peer: Peer


@dataclass(frozen=True, slots=True)
class SendChunk:
    peer: Peer
    rid: int
    oid: bytes
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class RefuseRead:
    peer: Peer
    rid: int
    oid: bytes
    reason: str


class ServeState:
    """The serve budget of one node."""

    def __init__(self, config: ServeConfig | None = None) -> None:
        self.config = config or ServeConfig()
        self.queues: dict[Peer, deque[ReadAskedEvent]] = {}
        self._turn: deque[Peer] = deque()  # peers with queued reads, round-robin
        self.sending: dict[tuple[Peer, int], int] = {}  # (peer, rid) -> length
        self.sending_bytes = 0
        self.peer_bytes: dict[Peer, int] = {}  # bytes being sent, per peer
        self._last: Peer | None = None  # the peer granted last
        self._table: dict[type, Callable[[Any], list[Any]]] = {
            ReadAskedEvent: self._on_asked,
            ReadSentEvent: self._on_sent,
            PeerGoneEvent: self._on_gone,
        }

    def handle(self, event: Any) -> list[Any]:
        return self._table[type(event)](event)

    def _on_asked(self, ev: ReadAskedEvent) -> list[Any]:
        if not 0 < ev.length <= self.config.max_read_bytes:
            why = f"a chunk must be 1 to {self.config.max_read_bytes} bytes, not {ev.length}"
            return [RefuseRead(ev.peer, ev.rid, ev.oid, why)]
        q = self.queues.get(ev.peer)
        if q is None:
            q = self.queues[ev.peer] = deque()
            if self._turn and self._turn[-1] == self._last:
                self._turn.insert(len(self._turn) - 1, ev.peer)  # before the one just served
            else:
                self._turn.append(ev.peer)
        q.append(ev)
        return self._grant()

    def _on_sent(self, ev: ReadSentEvent) -> list[Any]:
        length = self.sending.pop((ev.peer, ev.rid), None)
        if length is None:
            return []
        self.sending_bytes -= length
        self._peer_sent(ev.peer, length)
        return self._grant()

    def _peer_sent(self, peer: Peer, length: int) -> None:
        left = self.peer_bytes[peer] - length
        if left:
            self.peer_bytes[peer] = left
        else:
            del self.peer_bytes[peer]

    def _on_gone(self, ev: PeerGoneEvent) -> list[Any]:
        if self.queues.pop(ev.peer, None) is not None:
            self._turn.remove(ev.peer)
        for key in [k for k in self.sending if k[0] == ev.peer]:
            self.sending_bytes -= self.sending.pop(key)
        self.peer_bytes.pop(ev.peer, None)
        return self._grant()

    def _grant(self) -> list[Any]:
        """Grant queued reads round-robin over peers while the windows allow."""
        out: list[Any] = []
        cfg = self.config
        blocked = 0  # peers in a row whose own window is full
        while self._turn and blocked < len(self._turn):
            peer = self._turn[0]
            q = self.queues[peer]
            ask = q[0]
            if self.sending_bytes + ask.length > cfg.window_bytes:
                break
            if self.peer_bytes.get(peer, 0) + ask.length > cfg.peer_window_bytes:
                self._turn.rotate(-1)  # its turn passes, its reads stay queued
                blocked += 1
                continue
            blocked = 0
            q.popleft()
            self._last = peer
            self._turn.rotate(-1)
            if not q:
                del self.queues[peer]
                self._turn.remove(peer)
            self.sending[(peer, ask.rid)] = ask.length
            self.sending_bytes += ask.length
            self.peer_bytes[peer] = self.peer_bytes.get(peer, 0) + ask.length
            out.append(SendChunk(peer, ask.rid, ask.oid, ask.offset, ask.length))
        return out

    def validate(self) -> None:
        assert self.sending_bytes == sum(self.sending.values())
        per_peer: dict[Peer, int] = {}
        for (peer, _rid), length in self.sending.items():
            per_peer[peer] = per_peer.get(peer, 0) + length
        assert per_peer == self.peer_bytes
        assert all(v <= self.config.peer_window_bytes for v in per_peer.values())
        assert self.sending_bytes <= self.config.window_bytes
        assert set(self._turn) == set(self.queues)
        assert all(self.queues.values())
