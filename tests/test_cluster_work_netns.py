"""Work and objects cross three network "hosts" (namespaces on a test bridge): workers
listen on their node's address, so callers and pullers on other hosts reach them
(issue 8 items 4, 5 and 8). Needs root and ``ip``; skipped with the reason otherwise."""

from __future__ import annotations

import json
import shutil

import pytest

from actorcore.testing import make_tls_certificates, netns_unavailable, run_driver_on_netns_hosts

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(180)]

DRIVER = """
import json
import numpy as np
import actorcore as ac
ac.init(address=ADDRESS)

@ac.remote
def where(a=None):
    n = 0 if a is None else int(a.sum())
    return ac.get_runtime_context().get_node_id(), n

@ac.remote
def make(n):
    return np.ones(n, dtype=np.uint8)

@ac.remote
class Where:
    def node(self):
        return ac.get_runtime_context().get_node_id()

arr = np.ones(5 << 20, dtype=np.uint8)
on1 = where.options(resources={"h1": 1})
on2 = {"resources": {"h2": 1}}
h = Where.options(**on2).remote()
out = {
    "task": ac.get(on1.remote(), timeout=60),
    "arg": ac.get(on1.remote(ac.put(arr)), timeout=60),
    "result": int(ac.get(make.options(**on2).remote(5 << 20), timeout=60).sum()),
    "actor": ac.get(h.node.remote(), timeout=60),
    "me": ac.get_runtime_context().get_node_id(),
}
print(json.dumps(out))
ac.shutdown()
"""


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "mutual-tls"])
def test_tasks_actors_and_objects_cross_namespaced_hosts(tls, tmp_path):
    why = netns_unavailable()
    if why is not None:
        pytest.skip(why)
    if tls and shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    settings = make_tls_certificates(str(tmp_path))["node"] if tls else {}
    run, ids = run_driver_on_netns_hosts(3, DRIVER, **settings)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["me"] == ids[0]
    assert got["task"] == [ids[1], 0]
    assert got["arg"] == [ids[1], 5 << 20]
    assert got["result"] == 5 << 20
    assert got["actor"] == ids[2]
