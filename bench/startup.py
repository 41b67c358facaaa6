"""Start-up: from ``init()`` to the first task result, in a fresh process."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from typing import Any

_SCRIPT = r"""
import json, time
t_import = time.perf_counter()
import {mod} as fw
t0 = time.perf_counter()
fw.init({init_args})
@fw.remote
def one():
    return 1
assert fw.get(one.remote()) == 1
t1 = time.perf_counter()
fw.shutdown()
print(json.dumps({{"startup": t1 - t0, "import": t0 - t_import}}))
"""


def measure(python: str, framework: str, runs: int = 3) -> dict[str, Any]:
    mod = "ray" if framework == "ray" else "actorcore"
    init_args = "include_dashboard=False, logging_level='ERROR'" if framework == "ray" else ""
    code = _SCRIPT.format(mod=mod, init_args=init_args)
    samples = []
    imports = []
    for _ in range(runs):
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=180)
        if out.returncode != 0:
            return {"error": out.stderr[-500:]}
        line = [x for x in out.stdout.splitlines() if x.startswith("{")][-1]
        d = json.loads(line)
        samples.append(d["startup"])
        imports.append(d["import"])
    return {
        "median": statistics.median(samples),
        "samples": samples,
        "import_s": statistics.median(imports),
        "unit": "s",
    }


if __name__ == "__main__":
    print(measure(sys.executable, "actorcore"))
