"""A worker's CPU for one actor call, step by step, warm, on one thread (issue 14).

Runs the worker's own code for a sync actor call (``small_value() -> b"ok"``,
no arguments) without sockets or other threads: frames are fed to a
``FrameDecoder``, dispatched through ``RpcPeer.on_frame`` to the worker's
handler and mailbox, and the executor job the mailbox hands out runs inline;
the reply is encoded but not written. Each step is timed on its own
(``time.thread_time_ns`` over many calls), so the table says where the Python
time of a call goes; the end-to-end figures of ``bench.call_cpu`` add the
wake-ups, the socket calls and a cold cache on top. Two checkouts side by side::

    git archive main actorcore | tar -x -C /tmp/old
    python -m bench.worker_steps --old /tmp/old
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

N = 20000


def _per_call(fn: Callable[[], Any], n: int, per: int = 1) -> float:
    fn()
    t0 = time.thread_time_ns()
    for _ in range(n):
        fn()
    return (time.thread_time_ns() - t0) / (n * per) / 1000


def child() -> None:
    import uvloop

    from actorcore import _global as G
    from actorcore import _protocol as P
    from actorcore import _task_events as TE
    from actorcore._config import Config
    from actorcore._execution import TaskContext, current_task, decode_args, encode_results
    from actorcore._mailbox import ActorMailbox
    from actorcore._rpc import RpcPeer
    from actorcore._runtime import NodeInfo
    from actorcore._worker import WorkerRuntime

    node = NodeInfo(
        {"node_id": b"n" * 16, "address": ["127.0.0.1", 1], "arena_path": "", "capacity": 1,
         "session": "s"}
    )  # fmt: skip
    rt = WorkerRuntime(Config(), b"t" * 32, b"w" * 16, node)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    rt.loop, rt.loop_thread_id = loop, threading.get_ident()
    G.runtime = rt
    TE.worker_started(rt)
    TE._armed = True  # (events pile up in the bounded buffer: no flush is scheduled)

    class Actor:
        def small_value(self) -> bytes:
            return b"ok"

        async def async_value(self) -> bytes:
            return b"ok"

    aid = b"a" * 16
    mb = ActorMailbox(rt, aid, Actor(), "Actor", 1)
    mb.epoch = 1
    rt.mailboxes[aid] = mb
    jobs: list[Any] = []

    class Pool:  # the executor: jobs run inline, later
        def submit(self, job: Any) -> None:
            jobs.append(job)

        def begin_wait(self) -> bool:
            return False

        def end_wait(self) -> None:
            pass

        def jobs_waiting(self) -> bool:
            return False

    class Conn:  # encodes what the worker sends, writes nothing
        closed = congested = lendable = False
        sent = expect = 0
        all_sent: asyncio.Event | None = None

        def send(self, msg: Any, buffers: Any = None, alone: bool = False) -> None:
            P.encode(msg, buffers)
            Conn.sent += 1
            if Conn.sent == Conn.expect and Conn.all_sent is not None:
                Conn.all_sent.set()

    rt.pool = Pool()  # type: ignore[assignment]
    peer = RpcPeer(rt, rt.bound_handlers())
    peer.conn = Conn()  # type: ignore[assignment]
    owner = [b"o" * 16, "127.0.0.1", 4000, "/tmp/x.sock"]

    def call_msg(i: int, method: str = "small_value") -> Any:
        return P.ActorCallMsg(i, aid, method, os.urandom(16), b"", [], [os.urandom(20)],
                              owner, 0, 1)  # fmt: skip

    batch = 100  # calls read at once (the pipelined row)
    frames = b"".join(P.encode(call_msg(i)) for i in range(batch))
    dec = P.FrameDecoder(1 << 20, 1 << 30)
    msgs = [m for m, _ in dec.feed(frames)]
    out: dict[str, float] = {}
    out["decode (FrameDecoder.feed, 100 frames a read)"] = _per_call(
        lambda: dec.feed(frames), N // batch, batch
    )

    def dispatch_and_run() -> None:
        for m in msgs:
            peer.on_frame(None, m, [])  # type: ignore[arg-type]
        while jobs:
            jobs.pop()()

    def dispatch_only() -> None:
        for m in msgs:
            peer.on_frame(None, m, [])  # type: ignore[arg-type]
        jobs.clear()
        mb.queue.clear()
        mb.running = mb.sync_running = 0

    out["dispatch (on_frame, handler, Call, mailbox push, hand-off)"] = _per_call(
        dispatch_only, N // batch, batch
    )
    out["loop + executor, all steps but decode"] = _per_call(dispatch_and_run, N // batch, batch)
    amsgs = [call_msg(i, "async_value") for i in range(batch)]

    async def until_replied(n: int) -> None:
        Conn.all_sent = asyncio.Event()
        Conn.expect = n
        await Conn.all_sent.wait()

    async def async_batch() -> None:
        Conn.sent = 0
        for m in amsgs:
            peer.on_frame(None, m, [])  # type: ignore[arg-type]
        await until_replied(batch)

    def async_calls() -> None:
        loop.run_until_complete(async_batch())

    mb.max_concurrency = 1000  # (an async actor's default)
    out["async actor: dispatch, run on the loop, reply (100 at once)"] = _per_call(
        async_calls, N // batch, batch
    )
    mb.max_concurrency = 1
    msg = msgs[0]
    from actorcore._worker import Call

    call = Call(peer, msg, "Actor.small_value", msg.method, None, False)

    def context() -> None:
        token = current_task.set(TaskContext("Actor", call.task_id, aid))
        current_task.reset(token)

    out["  task context (contextvar)"] = _per_call(context, N)

    def events() -> None:
        TE.call_running(call, aid)
        TE.call_done(call, [[0, b"x", None]])

    out["  task events (running + done)"] = _per_call(events, N)
    TE._events.clear()
    out["  decode_args (no arguments)"] = _per_call(
        lambda: decode_args(rt, call.payload, call.resolved), N
    )
    name = msg.method  # (looked up by name, as the worker does)
    out["  method lookup + call"] = _per_call(lambda: getattr(mb.instance, name)(), N)
    out["  encode_results (b'ok')"] = _per_call(
        lambda: encode_results(rt, b"ok", call.return_ids, call.owner, call.name), N
    )
    results, _ = encode_results(rt, b"ok", call.return_ids, call.owner, call.name)
    out["  reply message + encode"] = _per_call(
        lambda: P.encode(P.TaskResultMsg(call.rid, results)), N
    )
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", help="a directory holding another checkout's actorcore/")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child()
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sides = {"new": here, **({"old": args.old} if args.old else {})}
    got: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
    for _ in range(args.rounds):
        for side, path in sides.items():
            env = dict(os.environ, PYTHONPATH=path)
            cmd = [sys.executable, os.path.abspath(__file__), "--child"]
            res = subprocess.run(
                cmd, env=env, cwd=path, capture_output=True, text=True, timeout=300
            )
            lines = [x for x in res.stdout.splitlines() if x.startswith("{")]
            if not lines:
                print(side, "failed:", res.stderr[-800:], file=sys.stderr)
                continue
            got[side].append(json.loads(lines[-1]))
    print(f"best of {args.rounds} rounds, us per call; load average {os.getloadavg()[0]:.1f}")
    names = list(got["new"][0]) if got["new"] else []
    print("| step | " + " | ".join(sides) + " |")
    print("|---|" + "---:|" * len(sides))
    for name in names:
        cells = [f"{min(r[name] for r in got[s]):.2f}" if got[s] else "-" for s in sides]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
