"""Issue 10 item 4 probed as a new user would (review, rev10): driver death.

A SIGKILLed driver's actors, running and queued tasks, placement group and
resources on every node (its detached actor lives on). Real etcd, real node
daemons; waits are for states with deadlines.
"""

from __future__ import annotations

import json
import os
import signal

import psutil
import pytest
from cluster_helpers import gone, run_driver

import actorcore as ac
from actorcore import _protocol as P
from actorcore._rpc import next_rid
from actorcore.testing import wait_for

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(150)]


DRIVER = """
    import os, signal, sys, time, json
    import actorcore as ac
    ac.init(address=ADDRESS)

    @ac.remote
    class Held:
        def pid(self):
            return os.getpid(), ac.get_runtime_context().get_node_id()

    @ac.remote
    def forever(d, i):
        open(os.path.join(d, f"{i}.{os.getpid()}"), "w").close()
        time.sleep(600)

    hs = [Held.options(num_cpus=1).remote()] + [
        Held.options(resources={"w": 1}).remote() for _ in range(2)]
    pids = []
    for i, h in enumerate(hs):
        try:
            pids.append(ac.get(h.pid.remote(), timeout=60))
        except Exception:
            from actorcore.util import state
            print("actor", i, "never answered:", state.list_actors(), file=sys.stderr)
            import asyncio, msgpack
            from actorcore.gcs import EtcdControlStore
            async def read():
                async with EtcdControlStore(ADDRESS, call_timeout=5.0) as s:
                    return (await s.get_prefix(b"/actors/"))[0]
            for kv in asyncio.run(read()):
                rec = msgpack.unpackb(kv.value, raw=False)
                print("ETCD", kv.key, kv.mod_revision, str(rec)[:400], file=sys.stderr)
            raise
    from actorcore.util import placement_group
    pg = placement_group([{"CPU": 0.5}] * 2, strategy="STRICT_SPREAD")  # its groups end too
    assert pg.wait(60)
    det = Held.options(name="keep", namespace="p4", lifetime="detached", num_cpus=0).remote()
    ac.get(det.pid.remote(), timeout=60)
    tasks = [forever.options(resources={"w": 1}, num_cpus=0).remote(DIR, i) for i in range(6)]
    while len(os.listdir(DIR)) < 2:
        time.sleep(0.05)  # two run (one `w` left on each of B and C), four wait
    print(json.dumps(pids), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_p4_sigkilled_driver_leaves_no_actor_process_no_task_and_frees_resources(abc, tmp_path):
    d = tmp_path / "started"
    d.mkdir()
    code = DRIVER.replace("ADDRESS", repr(abc.address)).replace("DIR", repr(str(d)))
    out = run_driver(code, abc.nodes[0].node_id)
    logs = "\n".join(abc.daemon_log(n)[-2500:] for n in abc.nodes)
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:] + logs
    pids = json.loads(out.stdout.splitlines()[-1])

    def left():
        bad = []
        for pid, node in pids:  # its actors' workers (each its own: they asked for resources)
            if not gone(pid):
                bad.append(f"the worker of its actor on {node[:8]} (pid {pid})")
        for f in os.listdir(d):  # the workers running its tasks: ended, or idle again
            pid = int(f.split(".")[1])
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE and "forever" in " ".join(p.cmdline()):
                    bad.append(f"worker {pid} still runs its task: {p.cmdline()}")
            except psutil.NoSuchProcess:
                pass
        for n in abc.live():
            try:
                row = n.ask(P.ListStateMsg(next_rid(), "node"))
            except ConnectionError as e:  # (seen once under load: say what the node did)
                log = abc.daemon_log(n)[-3000:]
                raise AssertionError(f"node {n.node_id[:8]}: {e!r}\n{log}") from e
            avail, total = dict(row["resources_available"]), dict(row["resources_total"])
            if (
                avail.get("w", 0) != total.get("w", 0)
                or avail.get("CPU") != total.get("CPU")
                or any("_group_" in k for k in avail)
            ):
                bad.append(f"node {n.node_id[:8]} still holds {total} - {avail}")
        return bad

    try:
        wait_for(lambda: not left(), 30, interval=0.1, what="the killed driver cleaned up")
    except TimeoutError:
        raise AssertionError(f"left behind: {left()}") from None
    # the four queued tasks never start once the driver is gone
    assert len(os.listdir(d)) == 2, os.listdir(d)
    h = ac.get_actor("keep", namespace="p4")  # the detached one lives on
    assert ac.get(h.pid.remote(), timeout=30)
    ac.kill(h)
