"""runtime_env: how long work waits for its env, in a fresh process.

``init`` ships a job working_dir (20 small modules and 2 MiB of data, so the
package is packed, hashed, sent to the node, unpacked there); the row is the
time from ``init()`` to the first result that imports from it. Then five
tasks each with a new per-task env (``env_vars``), each needing a worker of
its own: the median time to their result.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

_SCRIPT = r"""
import json, os, sys, time
import {mod} as fw
t0 = time.perf_counter()
fw.init({init_args}runtime_env={{"working_dir": sys.argv[1], "env_vars": {{"A": "job"}}}})
@fw.remote
def f():
    import m7
    return m7.X, os.environ["A"]
assert fw.get(f.remote()) == (7, "job")
t1 = time.perf_counter()
news = []
for i in range(5):
    t = time.perf_counter()
    env = {{"env_vars": {{"A": "t%d" % i}}}}
    assert fw.get(f.options(runtime_env=env).remote())[1] == "t%d" % i
    news.append(time.perf_counter() - t)
fw.shutdown()
print(json.dumps({{"first": t1 - t0, "new_env": news}}))
"""


def _tree(root: str) -> None:
    for i in range(20):
        with open(os.path.join(root, f"m{i}.py"), "w") as f:
            f.write(f"X = {i}\n")
    with open(os.path.join(root, "data.bin"), "wb") as f:
        f.write(os.urandom(2 << 20))


def measure(python: str, framework: str, runs: int = 3) -> dict[str, Any]:
    """``{"median": s, ...}`` of init-to-first-result; ``new_env_s``: a new env's task."""
    mod = "ray" if framework == "ray" else "actorcore"
    init_args = "include_dashboard=False, logging_level='ERROR', " if framework == "ray" else ""
    code = _SCRIPT.format(mod=mod, init_args=init_args)
    firsts, news = [], []
    with tempfile.TemporaryDirectory() as root:
        _tree(root)
        for _ in range(runs):
            out = subprocess.run(
                [python, "-c", code, root], capture_output=True, text=True, timeout=300
            )
            if out.returncode != 0:
                return {"error": out.stderr[-500:]}
            d = json.loads([x for x in out.stdout.splitlines() if x.startswith("{")][-1])
            firsts.append(d["first"])
            news.extend(d["new_env"])
    return {
        "median": statistics.median(firsts),
        "samples": firsts,
        "new_env_s": statistics.median(news),
        "unit": "s",
    }


if __name__ == "__main__":
    print(measure(sys.argv[1] if len(sys.argv) > 1 else sys.executable, "actorcore"))
