"""Worker output reaches the driver's terminal, one line at a time, prefixed.

In a worker, ``sys.stdout`` and ``sys.stderr`` are replaced by streams that cut
what is written into lines, tag each with the task or actor that printed it
and the pid, and ship them in batches through the node daemon to the drivers.
Output written below Python (C extensions writing to fd 1/2) goes to the
worker's log file in the session directory.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

from . import _protocol as P
from ._execution import current_task

if TYPE_CHECKING:
    from ._runtime import CoreRuntime

__all__ = ["capture_output", "print_lines"]


class _LineStream(io.TextIOBase):
    def __init__(self, kind: str, shipper: _Shipper) -> None:
        super().__init__()
        self.kind = kind
        self._shipper = shipper
        self._local = threading.local()

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        buf = getattr(self._local, "buf", "") + s
        if "\n" in buf:
            *lines, rest = buf.split("\n")
            self._local.buf = rest
            label = _label()
            for line in lines:
                self._shipper.add(self.kind, label, line)
        else:
            self._local.buf = buf
        return len(s)

    def flush(self) -> None:
        buf = getattr(self._local, "buf", "")
        if buf:
            self._local.buf = ""
            self._shipper.add(self.kind, _label(), buf)

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


def _label() -> str:
    ctx = current_task.get()
    name = ctx.label if ctx is not None else "worker"
    return f"{name} pid={os.getpid()}"


class _Shipper:
    """Collects lines from any thread; the loop sends them in batches."""

    def __init__(self, rt: CoreRuntime) -> None:
        self.rt = rt
        self.lines: list[Any] = []
        self.lock = threading.Lock()
        self.scheduled = False

    def add(self, kind: str, label: str, line: str) -> None:
        with self.lock:
            self.lines.append([kind, label, line])
            if self.scheduled:
                return
            self.scheduled = True
        self.rt.call_soon(self._arm)

    def _arm(self) -> None:
        # lines written in the same loop tick go out together; no timer, so
        # output printed just before a crash still leaves the process
        self.ship()

    def ship(self) -> None:
        with self.lock:
            lines, self.lines = self.lines, []
            self.scheduled = False
        if lines and self.rt.daemon is not None:
            try:
                self.rt.daemon.send(P.LogBatchMsg(lines))
            except ConnectionError:
                pass


def capture_output(rt: CoreRuntime) -> None:
    """Route this process's Python-level stdout/stderr to the drivers."""
    if not rt.config.log_to_driver:
        return
    shipper = _Shipper(rt)
    sys.stdout = _LineStream("out", shipper)  # type: ignore[assignment]
    sys.stderr = _LineStream("err", shipper)  # type: ignore[assignment]


def print_lines(lines: list[Any]) -> None:
    """Print worker lines on the driver, each prefixed with who printed it."""
    out: list[str] = []
    err: list[str] = []
    for kind, label, text in lines:
        (err if kind == "err" else out).append(f"({label}) {text}\n")
    if out:
        sys.stdout.write("".join(out))
        sys.stdout.flush()
    if err:
        sys.stderr.write("".join(err))
        sys.stderr.flush()
