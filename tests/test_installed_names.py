"""A user's own modules named like actorcore's internals must not break it."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import actorcore as ac

    @ac.remote
    def add(a, b):
        return a + b

    ac.init()
    print("result", ac.get(add.remote(1, 2), timeout=30))
    ac.shutdown()
    """
)


@pytest.mark.timeout(90)
def test_user_modules_named_store_gcs_scheduler_bench(tmp_path):
    for name in ("store", "gcs", "scheduler", "bench"):
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('user module {name} imported')\n")
    (tmp_path / "main.py").write_text(SCRIPT)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "main.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert proc.returncode == 0, proc.stderr
    assert "result 3" in proc.stdout


def test_internal_packages_live_under_actorcore():
    import actorcore.gcs
    import actorcore.scheduler
    import actorcore.store

    for mod in (actorcore.gcs, actorcore.scheduler, actorcore.store):
        assert mod.__name__.startswith("actorcore.")
