"""runtime_env across nodes (issue 8 item 9): code only the driver has runs on another node.

Node A (index 0) is the driver's; node B (index 1) alone has the resource
``onb``. The modules live in a temporary directory that is on no node's
``sys.path``: a worker of B can import them only from the package it pulled
from A into its own cache.
"""

from __future__ import annotations

import os
import textwrap

import pytest

import actorcore as ac
from actorcore import _protocol as P
from actorcore._rpc import next_rid
from actorcore.testing import Cluster

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(180)]


def _write(path, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    return str(path)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("crenv")
    _write(root / "wd" / "driveronly_wd.py", "WHO = 'wd'\n")
    _write(root / "mods" / "driveronly_pkg" / "__init__.py", "WHO = 'pkg'\n")
    return root


@pytest.fixture(scope="module")
def cluster(tree):
    with Cluster(num_nodes=0, ttl_s=3.0) as c:
        c.add_node(num_cpus=2)
        c.add_node(num_cpus=2, resources={"onb": 8})
        env = {"py_modules": [str(tree / "mods" / "driveronly_pkg")], "env_vars": {"JOB": "j"}}
        ac.init(address=c.address, attach_node=c.nodes[0].node_id, runtime_env=env)
        try:
            yield c
        finally:
            ac.shutdown()


def _stats(node) -> dict:
    return node.ask(P.ListStateMsg(next_rid(), "node"))["runtime_env"]


@ac.remote
def probe(*mods: str) -> dict:
    import importlib

    found = {}
    for m in mods:
        try:
            mod = importlib.import_module(m)
            found[m] = [mod.WHO, mod.__file__]
        except ImportError:
            found[m] = None
    return {
        "node": ac.get_runtime_context().get_node_id(),
        "mods": found,
        "cwd": os.getcwd(),
        "env": {k: os.environ.get(k) for k in ("JOB", "TASK")},
    }


@ac.remote
class Probe:
    def see(self) -> dict:
        import driveronly_pkg
        import driveronly_wd

        return {
            "node": ac.get_runtime_context().get_node_id(),
            "who": [driveronly_pkg.WHO, driveronly_wd.WHO],
            "task": os.environ.get("TASK"),
        }


def test_driver_only_code_imports_on_another_node(cluster, tree):
    b = cluster.nodes[1]
    env = {"working_dir": str(tree / "wd"), "env_vars": {"TASK": "t"}}
    got = ac.get(
        probe.options(resources={"onb": 1}, runtime_env=env).remote(
            "driveronly_wd", "driveronly_pkg"
        ),
        timeout=90,
    )
    assert got["node"] == b.node_id
    root_b = _stats(b)["root"]
    assert got["mods"]["driveronly_wd"][0] == "wd"
    assert got["mods"]["driveronly_wd"][1].startswith(root_b + os.sep)
    assert got["mods"]["driveronly_pkg"][0] == "pkg"  # from the job's py_modules
    assert got["mods"]["driveronly_pkg"][1].startswith(root_b + os.sep)
    assert got["cwd"].startswith(root_b + os.sep)
    assert got["env"] == {"JOB": "j", "TASK": "t"}


def test_packages_go_up_once_and_across_once(cluster, tree):
    a, b = cluster.nodes
    env = {"working_dir": str(tree / "wd")}
    refs = [probe.options(resources={"onb": 1}, runtime_env=env).remote() for _ in range(8)]
    refs += [probe.options(runtime_env=env).remote() for _ in range(4)]
    got = ac.get(refs, timeout=90)
    assert {g["node"] for g in got} == {a.node_id, b.node_id}
    sa, sb = _stats(a), _stats(b)
    assert sa["uploads"] == 2  # the job's package and the working_dir, each once
    assert sa["fetches"] == 0
    assert sb["uploads"] == 0 and sb["fetches"] == 2  # pulled from A once each
    assert sorted(sa["packages"]) == sorted(sb["packages"])


def test_actor_with_env_on_another_node(cluster, tree):
    b = cluster.nodes[1]
    env = {"working_dir": str(tree / "wd"), "env_vars": {"TASK": "actor"}}
    h = Probe.options(resources={"onb": 1}, runtime_env=env).remote()
    got = ac.get(h.see.remote(), timeout=90)
    assert got == {"node": b.node_id, "who": ["pkg", "wd"], "task": "actor"}
    ac.kill(h)


def test_functions_pickled_by_reference_to_driver_modules(cluster, tree):
    """cloudpickle sends a function of an importable module by reference: the worker
    imports that module, which only the shipped package gives it."""
    import sys

    b = cluster.nodes[1]
    lib = tree / "lib"
    _write(lib / "driveronly_lib.py", "def triple(x):\n    return 3 * x\n")
    sys.path.insert(0, str(lib))
    try:
        import driveronly_lib
    finally:
        sys.path.remove(str(lib))
    triple = ac.remote(driveronly_lib.triple)
    with pytest.raises(ModuleNotFoundError, match="driveronly_lib"):
        ac.get(triple.options(resources={"onb": 1}).remote(2), timeout=90)  # B lacks it
    env = {"py_modules": [driveronly_lib]}
    assert ac.get(triple.options(resources={"onb": 1}, runtime_env=env).remote(2), timeout=90) == 6
    assert b.node_id in {n["NodeID"] for n in ac.nodes()}


def test_zz_a_stopped_node_takes_its_cache_with_it(cluster):
    b = cluster.nodes[1]
    root = _stats(b)["root"]
    assert os.listdir(root)  # packages pulled by the tests above
    cluster.stop_node(b)
    assert not os.path.exists(root)
