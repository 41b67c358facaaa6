"""Running one side of a side-by-side benchmark (actorcore, or Ray in its own
venv) as ``python -m bench.<module> --side SIDE ...`` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

__all__ = ["run_side"]

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_side(module: str, python: str, side: str, *args: str, timeout: float = 900.0) -> Any:
    """Run ``bench.<module> --side SIDE ARGS...`` with ``python``; the JSON of
    its last line of output.

    Raises:
        RuntimeError: the side failed (with the end of its stderr).
    """
    done = subprocess.run(
        [python, "-m", f"bench.{module}", "--side", side, *args],
        capture_output=True,
        text=True,
        cwd=HERE,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": HERE},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{side} side failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
