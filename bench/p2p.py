"""``python -m bench.p2p``: node-to-node object pulls, against the floor.

Two (and then four) node daemons on this machine, each with its own arena and
session, as if on separate machines; every byte goes over TCP on loopback.

* floor: one TCP stream over loopback, ``sendall`` from one process into
  ``recv_into`` a preallocated, already touched buffer in another;
* pull of a 200 MiB array from node A into node B: the first pull writes
  into pages B's arena never touched (cold), the later ones reuse the range
  the freed copy left (warm);
* broadcast: the same object pulled by three nodes at once.

    python -m bench.p2p [--mib 200] [--rounds 5] [--chunk-mib 8]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import threading
import time
from typing import Any

import numpy as np

from actorcore import _protocol as P
from actorcore._config import Config
from actorcore._driver import spawn_daemon
from actorcore._ids import new_id
from actorcore._rpc import error_from_reply, next_rid
from actorcore._serialization import serialize
from actorcore._store_client import StoreClient
from actorcore._sync_client import SyncClient

MiB = 1 << 20
TOKEN = os.urandom(32)


# --- the floor ----------------------------------------------------------------------------


def _floor_sender(port: int, nbytes: int) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    data = bytearray(os.urandom(MiB)) * (nbytes // MiB)
    while s.recv(1):
        s.sendall(data)
    s.close()


class Floor:
    """One loopback TCP stream: ``sendall`` in one process into ``recv_into`` a
    preallocated, already touched buffer in another. One round per call."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self._ls = socket.socket()
        self._ls.bind(("127.0.0.1", 0))
        self._ls.listen(1)
        self._proc = mp.get_context("spawn").Process(
            target=_floor_sender, args=(self._ls.getsockname()[1], nbytes)
        )
        self._proc.start()
        self._conn, _ = self._ls.accept()
        self._buf = memoryview(bytearray(nbytes))  # zero-filled: its pages are touched

    def round(self) -> float:
        """GB/s of one transfer of ``nbytes``."""
        mv, n = self._buf, self.nbytes
        t = time.perf_counter()
        self._conn.send(b"x")
        got = 0
        while got < n:
            got += self._conn.recv_into(mv[got:])
        return n / (time.perf_counter() - t) / 1e9

    def close(self) -> None:
        self._conn.close()
        self._proc.join(10)
        self._ls.close()


# --- nodes ----------------------------------------------------------------------------------


class Node:
    """A node daemon, and clients of it (one request at a time per client)."""

    def __init__(self, chunk: int) -> None:
        cfg = Config.from_env(
            num_cpus=1,
            prestart_workers=0,
            object_store_memory=1024 * MiB,
            transfer_chunk_bytes=chunk,
        )
        self.proc, self.info = spawn_daemon(cfg, TOKEN, os.getpid())
        self.id = new_id()
        self.clients: list[SyncClient] = []
        self.store = StoreClient(
            self.info["arena_path"], self.info["capacity"], self.client(), self.id
        )
        self.ctl = self.client()
        self.address = self.call(self.ctl, P.TransferStatsMsg(next_rid()))["address"]

    def client(self) -> SyncClient:
        c = SyncClient(
            tuple(self.info["address"]),
            token=TOKEN,
            role="driver",
            my_id=self.id,
            max_header_bytes=1 << 20,
            max_frame_bytes=1 << 30,
        )
        self.clients.append(c)
        return c

    @staticmethod
    def call(client: SyncClient, msg: Any) -> Any:
        reply = client.call(msg)
        if reply.TAG == P.Tag.ERROR_REPLY:
            raise error_from_reply(reply)
        return reply.value

    def pull(self, client: SyncClient, oid: bytes, holder: Node) -> float:
        """Seconds for one pull of ``oid`` from ``holder``."""
        t = time.perf_counter()
        self.call(client, P.PullObjectMsg(next_rid(), oid, [list(holder.address)], self.id))
        return time.perf_counter() - t

    def drop(self, oid: bytes) -> None:
        """Free this node's copy (its range goes back to the allocator, pages stay warm)."""
        self.ctl.send(P.FreeObjectsMsg([oid]))
        self.call(self.ctl, P.ListStateMsg(next_rid(), "store"))  # the free was handled

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        self.store.arena.close()
        self.proc.terminate()
        self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def run(nbytes: int, rounds: int, chunk: int) -> dict[str, Any]:
    """Floor and pull rounds, alternating (so both see the same machine load)."""
    floor = Floor(nbytes)
    nodes = [Node(chunk) for _ in range(4)]
    a, b, *others = nodes
    try:
        arr = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)
        oid = new_id()
        size = a.store.put(oid, serialize(arr), a.id)
        del arr
        puller = b.client()
        floors, pulls = [], []
        for _ in range(rounds):
            floors.append(floor.round())
            pulls.append(size / b.pull(puller, oid, a) / 1e9)
            b.drop(oid)
        return {
            "size": size,
            "floor": floors,
            "cold": pulls[0],
            "warm": pulls[1:],
            **broadcast(oid, size, a, [b, *others]),
        }
    finally:
        floor.close()
        for n in nodes:
            n.stop()


def broadcast(oid: bytes, size: int, holder: Node, pullers: list[Node]) -> dict[str, Any]:
    """Every puller pulls ``oid`` from ``holder`` at once."""
    clients = [(n, n.client()) for n in pullers]
    start = threading.Barrier(len(clients) + 1)
    took: list[float] = []

    def one(n: Node, c: SyncClient) -> None:
        start.wait()
        took.append(n.pull(c, oid, holder))

    threads = [threading.Thread(target=one, args=nc) for nc in clients]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "broadcast_wall_s": wall,
        "broadcast_gbps": len(clients) * size / wall / 1e9,
        "broadcast_each_s": sorted(took),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--mib", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--chunk-mib", type=int, default=8)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    r = run(args.mib * MiB, args.rounds, args.chunk_mib * MiB)
    fl = r["floor"]
    print(f"floor: one TCP stream, sendall -> recv_into: {_fmt(fl)} GB/s")
    what = f"pull {args.mib} MiB node A -> node B over TCP"
    print(f"{what}, first (cold pages): {r['cold']:.2f} GB/s")
    print(f"{what}, again (warm pages): {_fmt(r['warm'])} GB/s")
    if r["warm"]:
        ratio = statistics.median(r["warm"]) / statistics.median(fl)
        print(f"  median warm pull / median floor: {ratio:.0%}")
    each = ", ".join(f"{t:.2f}" for t in r["broadcast_each_s"])
    print(
        f"broadcast: 3 nodes pull it from A at once: {r['broadcast_wall_s']:.2f} s "
        f"({r['broadcast_gbps']:.2f} GB/s total; each done after {each} s)"
    )


def _fmt(xs: list[float]) -> str:
    if not xs:
        return "-"
    return (
        f"median {statistics.median(xs):.2f}, best {max(xs):.2f} ("
        + ", ".join(f"{x:.2f}" for x in xs)
        + ")"
    )


if __name__ == "__main__":
    main()
