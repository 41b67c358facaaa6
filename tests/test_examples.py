"""The programs in examples/ run to the end at small sizes and print the result they promise.

Each example runs as a user would run it (``python examples/NAME.py --small``)
in a subprocess with a deadline, and ends with one ``RESULT key=value ...``
line that the test reads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE_S = 45


def run_example(name: str, *args: str) -> dict[str, str]:
    """Run examples/NAME.py with --small; return the fields of its RESULT line."""
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "examples", f"{name}.py"), "--small", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,  # so a hung run can be killed with everything it started
    )
    try:
        out, err = proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{name} did not finish in {DEADLINE_S} s\n{out}\n{err}")
    assert proc.returncode == 0, f"{name} exited with {proc.returncode}\n{out}\n{err}"
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, f"{name} printed no RESULT line\n{out}"
    return dict(field.split("=", 1) for field in lines[-1].split()[1:])


@pytest.mark.timeout(60)
def test_tree_reduce_matches_the_sequential_sum():
    r = run_example("tree_reduce")
    assert r["tree_sum_matches"] == "True"


@pytest.mark.timeout(60)
def test_parameter_server_reaches_the_target_accuracy_sync_and_async():
    r = run_example("parameter_server")
    assert float(r["sync_accuracy"]) >= 0.88
    assert float(r["async_accuracy"]) >= 0.88


@pytest.mark.timeout(60)
def test_rl_rollouts_improve_the_reward():
    r = run_example("rl_rollouts")
    assert r["reward_improved"] == "True"
    assert float(r["last_reward"]) > 2 * float(r["first_reward"])


@pytest.mark.timeout(60)
def test_hyperparameter_search_finds_a_good_trial():
    r = run_example("hyperparameter_search")
    assert r["best_found"] == "True"
    assert float(r["best_accuracy"]) >= 0.9


@pytest.mark.timeout(60)
def test_async_service_times_out_cancels_and_keeps_serving():
    r = run_example("async_service")
    assert r["timeout_status"] == "504"
    assert int(r["backend_cancelled"]) >= 2
    assert r["served_after_cancel"] == "True"
    assert float(r["cache_hit_rate"]) > 0.5


@pytest.mark.timeout(60)
def test_batch_inference_writes_every_batch_with_the_right_predictions(tmp_path):
    r = run_example("batch_inference", "--out", str(tmp_path / "out"))
    assert r["check_matches"] == "True"
    assert int(r["files"]) == 20
    assert len(os.listdir(tmp_path / "out")) == 20
