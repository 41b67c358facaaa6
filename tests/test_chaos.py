"""The chaos suite, short (issue 10 item 7): ``bench.chaos`` for a few seconds in CI.

Workers of the non-driver nodes are SIGKILLed at random under a mixed
workload (tasks with retries, actors with restarts, 1 MiB objects read on
other nodes): every answer must be right or an error that names the loss, and
no call may hang. The long run is ``python -m bench.chaos`` (bench/RESULTS.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parent.parent


def _chaos(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--json", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
        env=dict(os.environ),
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no report (exit {out.returncode}): {out.stderr[-3000:]}"
    return json.loads(lines[-1])


def test_chaos_worker_kills_every_answer_right_or_named_none_hangs():
    r = _chaos("--duration", "15", "--nodes", "2", "--kill-every", "0.7", "--deadline", "30")
    assert r["hung"] == [], r
    assert r["wrong"] == [], r
    assert r["kills"]["worker"] >= 5, r
    for kind in ("task", "object", "actor"):
        assert r["correct"].get(kind, 0) > 0, r
    # a worker kill loses nothing that can be retried: tasks retry, actors restart
    assert sum(r["lost"].values()) <= r["kills"]["worker"], r


def test_chaos_node_kills_too():
    """Whole nodes SIGKILLed as well (a fresh node replaces each): tasks retried on
    live nodes, actors restarted elsewhere, objects rebuilt or reported lost."""
    r = _chaos(
        "--duration", "20", "--nodes", "3", "--kill-every", "1.5", "--kill-daemons",
        "--deadline", "30",
    )  # fmt: skip
    assert r["hung"] == [] and r["wrong"] == [], r
    assert r["kills"]["daemon"] >= 1, r
