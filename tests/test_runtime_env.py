"""runtime_env on one node (issue 8 item 9): working_dir, py_modules, env_vars.

The module's driver has a job-wide env (``ac.init(runtime_env=...)``): a
working_dir holding ``jobmod`` and two variables; per-task/actor envs merge
over it. Every test checks what a worker really sees (imports, cwd, os.environ).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import actorcore as ac
from actorcore import _global as G
from actorcore import _protocol as P
from actorcore._rpc import next_rid

pytestmark = pytest.mark.timeout(120)

LIMIT = 256 << 10


def _write(path, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    return str(path)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("renv")
    job = root / "jobdir"
    _write(job / "jobmod.py", "WHO = 'job'\n")
    _write(job / "data.txt", "job data\n")
    _write(job / ".git" / "HEAD", "ref: x\n")
    _write(job / "__pycache__" / "junk.pyc", "x")
    other = root / "otherdir"
    _write(other / "othermod.py", "WHO = 'other'\n")
    _write(root / "pkgs" / "shippedpkg" / "__init__.py", "from .inner import X\n")
    _write(root / "pkgs" / "shippedpkg" / "inner.py", "X = 'pkg'\n")
    _write(root / "single" / "singlemod.py", "Y = 'single'\n")
    return root


@pytest.fixture(scope="module")
def job(tree):
    env = {"working_dir": str(tree / "jobdir"), "env_vars": {"JOB_VAR": "job", "SHARED": "job"}}
    ac.init(num_cpus=2, runtime_env=env, runtime_env_max_bytes=LIMIT)
    try:
        yield tree
    finally:
        ac.shutdown()


def _node_stats() -> dict:
    facts = G.require().call_daemon(P.ListStateMsg(next_rid(), "node"))
    return facts["runtime_env"]


@ac.remote
def probe(*mods: str) -> dict:
    import importlib

    seen = {}
    for m in mods:
        try:
            mod = importlib.import_module(m)
            seen[m] = getattr(mod, "WHO", None) or getattr(mod, "X", None) or mod.Y
        except ImportError:
            seen[m] = None
    return {
        "mods": seen,
        "cwd": os.getcwd(),
        "env": {k: os.environ.get(k) for k in ("JOB_VAR", "SHARED", "TASK_VAR")},
        "pid": os.getpid(),
        "files": sorted(os.listdir(".")),
        "context": ac.get_runtime_context().runtime_env,
    }


@ac.remote
class Probe:
    def see(self, *mods: str) -> dict:
        import importlib

        out = {}
        for m in mods:
            try:
                out[m] = importlib.import_module(m).__name__
            except ImportError:
                out[m] = None
        keys = ("JOB_VAR", "SHARED", "TASK_VAR")
        return {"mods": out, "env": {k: os.environ.get(k) for k in keys}}


def test_job_env_reaches_plain_tasks(job):
    got = ac.get(probe.remote("jobmod"), timeout=60)
    assert got["mods"] == {"jobmod": "job"}
    assert got["env"] == {"JOB_VAR": "job", "SHARED": "job", "TASK_VAR": None}
    stats = _node_stats()
    assert got["cwd"].startswith(stats["root"] + os.sep)  # the node's cache, not the driver's dir
    assert got["files"] == ["data.txt", "jobmod.py"]  # .git and __pycache__ left out
    assert got["context"]["env_vars"] == {"JOB_VAR": "job", "SHARED": "job"}
    assert got["context"]["working_dir"] in stats["packages"]
    assert ac.get_runtime_context().runtime_env == got["context"]
    assert "JOB_VAR" not in os.environ  # the driver's own environment is untouched


def test_task_env_vars_merge_over_the_job(job):
    env = {"env_vars": {"SHARED": "task", "TASK_VAR": "t"}}
    got = ac.get(probe.options(runtime_env=env).remote("jobmod"), timeout=60)
    assert got["env"] == {"JOB_VAR": "job", "SHARED": "task", "TASK_VAR": "t"}
    assert got["mods"] == {"jobmod": "job"}  # the job's working_dir stays


def test_task_working_dir_overrides_the_job(job):
    env = {"working_dir": str(job / "otherdir")}
    got = ac.get(probe.options(runtime_env=env).remote("othermod", "jobmod"), timeout=60)
    assert got["mods"] == {"othermod": "other", "jobmod": None}
    assert got["env"]["JOB_VAR"] == "job"  # env_vars still merged from the job


def test_py_modules_package_file_and_module_object(job):
    sys.path.insert(0, str(job / "single"))
    try:
        import singlemod
    finally:
        sys.path.remove(str(job / "single"))
    env = {"py_modules": [str(job / "pkgs" / "shippedpkg"), singlemod]}
    got = ac.get(probe.options(runtime_env=env).remote("shippedpkg", "singlemod"), timeout=60)
    assert got["mods"] == {"shippedpkg": "pkg", "singlemod": "single"}


def test_actor_env_vars_and_modules(job):
    env = {"env_vars": {"TASK_VAR": "actor"}, "py_modules": [str(job / "pkgs" / "shippedpkg")]}
    light = Probe.options(runtime_env=env).remote()
    heavy = Probe.options(runtime_env=env, num_cpus=1).remote()
    for h in (light, heavy):
        got = ac.get(h.see.remote("shippedpkg", "jobmod"), timeout=60)
        assert got["mods"] == {"shippedpkg": "shippedpkg", "jobmod": "jobmod"}
        assert got["env"] == {"JOB_VAR": "job", "SHARED": "job", "TASK_VAR": "actor"}
    plain = Probe.remote()
    assert ac.get(plain.see.remote(), timeout=60)["env"]["TASK_VAR"] is None
    for h in (light, heavy, plain):
        ac.kill(h)


def test_workers_of_one_env_never_serve_another(job):
    a = {"env_vars": {"TASK_VAR": "a"}}
    b = {"env_vars": {"TASK_VAR": "b"}}
    got_a = ac.get([probe.options(runtime_env=a).remote() for _ in range(6)], timeout=60)
    got_b = ac.get([probe.options(runtime_env=b).remote() for _ in range(6)], timeout=60)
    got_job = ac.get([probe.remote() for _ in range(6)], timeout=60)
    assert {g["env"]["TASK_VAR"] for g in got_a} == {"a"}
    assert {g["env"]["TASK_VAR"] for g in got_b} == {"b"}
    assert {g["env"]["TASK_VAR"] for g in got_job} == {None}
    pids = [{g["pid"] for g in got} for got in (got_a, got_b, got_job)]
    assert not (pids[0] & pids[1]) and not (pids[0] & pids[2]) and not (pids[1] & pids[2])


def test_nested_tasks_inherit_the_env(job):
    @ac.remote
    def parent() -> dict:
        return ac.get(probe.remote("othermod"))

    env = {"working_dir": str(job / "otherdir"), "env_vars": {"TASK_VAR": "parent"}}
    got = ac.get(parent.options(runtime_env=env).remote(), timeout=60)
    assert got["mods"] == {"othermod": "other"}
    assert got["env"]["TASK_VAR"] == "parent"


def test_same_content_is_uploaded_once(job, tmp_path):
    before = _node_stats()
    src = _write(tmp_path / "a" / "same_content_mod.py", "Z = 1\n")
    twin = _write(tmp_path / "b" / "same_content_mod.py", "Z = 1\n")
    for d in (os.path.dirname(src), os.path.dirname(twin), os.path.dirname(src)):
        env = {"working_dir": d}
        assert (
            ac.get(probe.options(runtime_env=env).remote(), timeout=60)["env"]["JOB_VAR"] == "job"
        )
        ac.get([probe.options(runtime_env=env).remote() for _ in range(3)], timeout=60)
    after = _node_stats()
    assert after["uploads"] == before["uploads"] + 1  # two directories, one content, one upload
    assert after["unpacks"] == before["unpacks"] + 1
    assert len(after["packages"]) == len(before["packages"]) + 1


def test_bad_runtime_envs_fail_at_the_call_site(job, tmp_path):
    with pytest.raises(ValueError, match=r"not supported.*working_dir.*py_modules.*env_vars"):
        probe.options(runtime_env={"pip": ["requests"]})
    with pytest.raises(ValueError, match="not an existing directory"):
        probe.options(runtime_env={"working_dir": str(tmp_path / "nope")})
    with pytest.raises(ValueError, match="remote URIs"):
        probe.options(runtime_env={"working_dir": "s3://bucket/x.zip"})
    with pytest.raises(ValueError, match=r"package directory or \.py file"):
        probe.options(runtime_env={"py_modules": [str(tmp_path / "missing")]})
    with pytest.raises(TypeError, match="env_vars"):
        probe.options(runtime_env={"env_vars": {"A": 1}})
    with pytest.raises(TypeError, match="must be a dict"):
        Probe.options(runtime_env=["working_dir"])
    big = tmp_path / "big"
    big.mkdir()
    (big / "blob.bin").write_bytes(os.urandom(2 * LIMIT))
    with pytest.raises(ValueError, match="runtime_env_max_bytes"):
        probe.options(runtime_env={"working_dir": str(big)}).remote()
    env = {"working_dir": str(big), "excludes": ["*.bin"]}
    assert ac.get(probe.options(runtime_env=env).remote(), timeout=60)["files"] == []
    with pytest.raises(ValueError, match="not supported"):
        ac.init(runtime_env={"conda": "x"}, ignore_reinit_error=True)


_CLEANUP = """
import json, os, sys
import actorcore as ac
from actorcore import _global as G, _protocol as P
from actorcore._rpc import next_rid
ac.init(num_cpus=1, runtime_env={"working_dir": sys.argv[1], "env_vars": {"X": "1"}})
@ac.remote
def f():
    return os.getcwd(), os.environ["X"]
cwd, x = ac.get(f.remote(), timeout=60)
root = G.require().call_daemon(P.ListStateMsg(next_rid(), "node"))["runtime_env"]["root"]
ac.shutdown()
print(json.dumps([cwd, x, root]))
"""


def test_the_cache_goes_when_the_node_stops(tmp_path):
    wd = os.path.dirname(_write(tmp_path / "wd" / "m.py", "A = 1\n"))
    out = subprocess.run(
        [sys.executable, "-c", _CLEANUP, wd], capture_output=True, text=True, timeout=100
    )
    assert out.returncode == 0, out.stderr
    cwd, x, root = json.loads(out.stdout.strip().splitlines()[-1])
    assert x == "1" and cwd.startswith(root)
    assert not os.path.exists(root)


def test_a_package_the_node_cannot_get_fails_the_work_clearly(job, monkeypatch):
    from actorcore import _runtime_env as RE

    missing = "0" * 32
    bad = {"py_modules": [missing], "sources": {missing: [G.require().node.node_id.hex()]}}
    monkeypatch.setattr(RE, "resolve", lambda rt, env: bad if env else None)
    env = {"env_vars": {"TASK_VAR": "unreachable"}}
    with pytest.raises(ac.errors.ActorCoreError, match="no live node could send it"):
        ac.get(probe.options(runtime_env=env).remote(), timeout=60)
    h = Probe.options(runtime_env=env).remote()
    with pytest.raises(ac.errors.ActorCoreError, match="no live node could send it"):
        ac.get(h.see.remote(), timeout=60)
    monkeypatch.undo()
    assert ac.get(probe.remote(), timeout=60)["env"]["JOB_VAR"] == "job"  # the node goes on


def test_threads_submitting_a_new_env_at_once_upload_it_once(job, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    before = _node_stats()["uploads"]
    wd = os.path.dirname(_write(tmp_path / "threads" / "threadmod.py", "WHO = 'threads'\n"))
    env = {"working_dir": wd}
    with ThreadPoolExecutor(8) as pool:
        refs = list(
            pool.map(lambda _: probe.options(runtime_env=env).remote("threadmod"), range(8))
        )
    assert {g["mods"]["threadmod"] for g in ac.get(refs, timeout=60)} == {"threads"}
    assert _node_stats()["uploads"] == before + 1


def test_a_restarted_actor_keeps_its_env(job):
    from actorcore.testing import actor_pid, kill_pid, list_state, wait_for

    env = {"env_vars": {"TASK_VAR": "restarted"}, "working_dir": str(job / "otherdir")}
    for opts in ({}, {"num_cpus": 1}):  # a light (shared host) and a dedicated actor
        h = Probe.options(runtime_env=env, max_restarts=1, **opts).remote()
        assert ac.get(h.see.remote(), timeout=60)["env"]["TASK_VAR"] == "restarted"
        old = actor_pid(h)
        kill_pid(old)

        def restarted(h=h, old=old) -> bool:
            rows = [r for r in list_state("actors") if r["actor_id"] == h.id.hex()]
            return bool(rows) and rows[0]["state"] == "ALIVE" and rows[0]["pid"] not in (old, None)

        wait_for(restarted, 30, what="actor restarted")
        got = ac.get(h.see.remote("othermod"), timeout=60)
        assert got["env"]["TASK_VAR"] == "restarted" and got["mods"]["othermod"] == "othermod"
        ac.kill(h)
