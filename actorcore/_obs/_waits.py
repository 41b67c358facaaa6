"""Progress of the CLI's waits (``actorcore start`` joining, ``actorcore stop``).

:class:`Waiting` shows what a command waits for and for how long, on stderr:
on a terminal one line redrawn every 0.2 s (``joining cluster ... 3.4 s``),
elsewhere (logs, pipes) one line when it starts and one when it ends.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

__all__ = ["Waiting"]

_SPIN = "|/-\\"


class Waiting:
    """``with Waiting("joining cluster X"):`` around a blocking wait."""

    def __init__(self, what: str, file: TextIO | None = None, every: float = 0.2) -> None:
        self.what = what
        self.file = file or sys.stderr
        self.every = every
        self.started = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tty = bool(getattr(self.file, "isatty", lambda: False)())

    def _line(self, tail: str) -> str:
        return f"{self.what} ... {time.monotonic() - self.started:.1f} s{tail}"

    def _tick(self) -> None:
        i = 0
        while not self._stop.wait(self.every):
            i += 1
            self.file.write("\r" + self._line(" " + _SPIN[i % len(_SPIN)]))
            self.file.flush()

    def __enter__(self) -> Waiting:
        self.started = time.monotonic()
        if self._tty:
            self._thread = threading.Thread(target=self._tick, name="ac-waiting", daemon=True)
            self._thread.start()
        else:
            self.file.write(f"{self.what} ...\n")
            self.file.flush()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        outcome = "done" if exc_type is None else f"failed ({exc_type.__name__})"
        self.file.write(("\r" if self._tty else "") + self._line(f": {outcome}") + "\n")
        self.file.flush()
