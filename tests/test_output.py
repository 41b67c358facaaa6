"""Worker output (issue 2, item 9): what tasks and actors print reaches the
driver's terminal, line by line, prefixed with who printed it and its pid;
stdout stays stdout and stderr stays stderr.

The main tests run a real driver script in a subprocess and read its stdout
and stderr, as a user's terminal would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading

import pytest

from actorcore.testing import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVER = r"""
import asyncio, json, os, sys
import actorcore as ac

ac.init(num_cpus=2, log_to_driver=(sys.argv[1] == "on"))

@ac.remote
def hello_task(x):
    print(f"hello from task {x}")
    print(f"oops on stderr {x}", file=sys.stderr)
    return os.getpid()

@ac.remote
async def async_hello():
    await asyncio.sleep(0)
    print("hello from a coroutine")
    return os.getpid()

@ac.remote
def two_lines():
    print("first of two\nsecond of two")
    print("no newline yet", end="", flush=True)
    return os.getpid()

@ac.remote
class Printer:
    def __init__(self):
        print("printer constructed")

    def say(self, text):
        print(f"actor says {text}")
        print(f"actor complains {text}", file=sys.stderr)
        return os.getpid()

    async def say_async(self, text):
        print(f"async actor says {text}")
        return os.getpid()

p = Printer.remote()
pids = {
    "task": ac.get(hello_task.remote(1), timeout=60),
    "async_task": ac.get(async_hello.remote(), timeout=60),
    "two_lines": ac.get(two_lines.remote(), timeout=60),
    "actor": ac.get(p.say.remote("hi"), timeout=60),
    "actor_async": ac.get(p.say_async.remote("ho"), timeout=60),
}
sys.stdout.write("RESULT " + json.dumps(pids) + "\n")  # one write: worker lines cannot split it
sys.stdout.flush()
sys.stdin.readline()  # the test saw what it waited for
ac.shutdown()
print("DRIVER DONE", flush=True)
"""


class DriverRun:
    """A driver subprocess whose stdout and stderr lines are collected as they come."""

    def __init__(self, tmp_path, *args):
        script = tmp_path / "driver.py"
        script.write_text(DRIVER)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [env.get("PYTHONPATH")])])
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=str(tmp_path),
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream, sink):
        for raw in iter(stream.readline, b""):
            sink.append(raw.decode(errors="replace").rstrip("\n"))

    def result(self, timeout=60.0):
        def find():
            for line in list(self.out):
                at = line.find("RESULT {")
                if at >= 0:
                    return json.JSONDecoder().raw_decode(line[at + len("RESULT ") :])[0]
            if self.proc.poll() is not None:
                raise AssertionError("driver exited early:\n" + "\n".join(self.err))
            return None

        return wait_for(find, timeout, what="the driver's RESULT line")

    def finish(self, timeout=30.0):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"go\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
        self.proc.wait(timeout)
        for t in self._threads:
            t.join(10)
        return self.proc.returncode

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for t in self._threads:
            t.join(10)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


@pytest.fixture(scope="module")
def printed(tmp_path_factory):
    """Run the driver once with output on; every test checks a part of what it printed."""
    run = DriverRun(tmp_path_factory.mktemp("output"), "on")
    try:
        pids = run.result()
        expected = [
            f"({name} pid={pids[key]}) {text}"
            for name, key, text in [
                ("hello_task", "task", "hello from task 1"),
                ("async_hello", "async_task", "hello from a coroutine"),
                ("two_lines", "two_lines", "no newline yet"),
                ("Printer", "actor", "actor says hi"),
                ("Printer", "actor_async", "async actor says ho"),
            ]
        ]
        try:
            wait_for(lambda: all(e in run.out for e in expected), 20, what="worker lines arrive")
        except TimeoutError:
            pass  # the tests say what is missing
        code = run.finish()
        return {"pids": pids, "out": list(run.out), "err": list(run.err), "code": code}
    finally:
        run.close()


def _lines(stream, pattern):
    return [m for line in stream if (m := re.fullmatch(pattern, line))]


def test_driver_ran_cleanly(printed):
    assert printed["code"] == 0, "\n".join(printed["err"])
    assert "DRIVER DONE" in printed["out"]


def test_task_stdout_is_prefixed_with_name_and_pid(printed):
    pid = printed["pids"]["task"]
    assert f"(hello_task pid={pid}) hello from task 1" in printed["out"], printed["out"]


def test_task_stderr_goes_to_stderr(printed):
    pid = printed["pids"]["task"]
    assert f"(hello_task pid={pid}) oops on stderr 1" in printed["err"], printed["err"]
    assert not [line for line in printed["out"] if "oops on stderr" in line]
    assert not [line for line in printed["err"] if "hello from task" in line]


def test_async_task_output_is_prefixed(printed):
    pid = printed["pids"]["async_task"]
    assert f"(async_hello pid={pid}) hello from a coroutine" in printed["out"], printed["out"]


def test_each_line_gets_its_own_prefix(printed):
    pid = printed["pids"]["two_lines"]
    out = printed["out"]
    assert f"(two_lines pid={pid}) first of two" in out, out
    assert f"(two_lines pid={pid}) second of two" in out, out
    # a flushed line without its newline still arrives, prefixed
    assert f"(two_lines pid={pid}) no newline yet" in out, out


def test_actor_method_output_carries_class_name(printed):
    out, err = printed["out"], printed["err"]
    pid = printed["pids"]["actor"]
    assert f"(Printer pid={pid}) actor says hi" in out, out
    assert f"(Printer pid={pid}) actor complains hi" in err, err
    pid = printed["pids"]["actor_async"]
    assert f"(Printer pid={pid}) async actor says ho" in out, out


def test_actor_constructor_output_carries_class_name(printed):
    pid = printed["pids"]["actor"]
    assert f"(Printer pid={pid}) printer constructed" in printed["out"], printed["out"]


def test_every_worker_line_is_prefixed(printed):
    """Nothing a worker printed arrives bare or twice."""
    for stream in (printed["out"], printed["err"]):
        for text in ("hello from task 1", "actor says hi", "hello from a coroutine"):
            hits = [line for line in stream if text in line]
            assert len(hits) <= 1, hits
            for line in hits:
                assert re.fullmatch(r"\([\w.]+ pid=\d+\) .*", line), line


@pytest.mark.timeout(90)
def test_log_to_driver_false_keeps_worker_output_away(tmp_path):
    run = DriverRun(tmp_path, "off")
    try:
        run.result()
        code = run.finish()
    finally:
        run.close()
    assert code == 0, "\n".join(run.err)
    assert not _lines(run.out, r"\(.* pid=\d+\) .*")
    assert not _lines(run.err, r"\(.* pid=\d+\) .*")


@pytest.mark.timeout(60)
def test_output_reaches_the_embedding_process(runtime, capsys):
    """In-process: lines arrive on this process's sys.stdout/sys.stderr while it runs."""
    ac = runtime

    @ac.remote
    class Shouter:
        def shout(self, word):
            print(word.upper())
            print(word.lower(), file=sys.stderr)
            return os.getpid()

    s = Shouter.remote()
    pid = ac.get(s.shout.remote("MiXeD"), timeout=30)
    seen = {"out": "", "err": ""}

    def arrived():
        cap = capsys.readouterr()
        seen["out"] += cap.out
        seen["err"] += cap.err
        return (
            f"(Shouter pid={pid}) MIXED" in seen["out"]
            and f"(Shouter pid={pid}) mixed" in seen["err"]
        )

    wait_for(arrived, 15, what="actor output in this process")
    assert "mixed" not in seen["out"]
    assert "MIXED" not in seen["err"]
