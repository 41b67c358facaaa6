"""A text progress bar over refs as they complete (no tqdm needed).

::

    for ref in ac.util.progress(refs, desc="chunks"):   # each ref as it completes
        ...
    values = ac.util.progress(refs).get()                # all values, in order

Works in plain scripts (blocking), on a running loop (``async for``) and in
notebooks (the bar redraws one line with a carriage return).
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, TextIO

__all__ = ["Progress", "progress"]

_POLL_S = 0.1


class Progress:
    """Iterate over ``refs`` in completion order while drawing a bar on ``file``."""

    def __init__(
        self, refs: Sequence[Any], desc: str = "", file: TextIO | None = None, width: int = 30
    ) -> None:
        self.refs = list(refs)
        self.desc = desc
        self.file = file
        self.width = width
        self.done = 0
        self.started = time.monotonic()
        self._last_draw = 0.0

    def _draw(self, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        total = len(self.refs) or 1
        frac = self.done / total
        filled = int(self.width * frac)
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (len(self.refs) - self.done) / rate if rate > 0 else 0.0
        bar = "#" * filled + "-" * (self.width - filled)
        prefix = f"{self.desc}: " if self.desc else ""
        line = (
            f"\r{prefix}{frac * 100:5.1f}%|{bar}| {self.done}/{len(self.refs)} "
            f"[{elapsed:.1f}s<{eta:.1f}s, {rate:.1f}/s]"
        )
        out = self.file or sys.stderr
        out.write(line + ("\n" if final else ""))
        out.flush()

    def __iter__(self) -> Iterator[Any]:
        from .._api import wait

        pending = list(self.refs)
        self._draw()
        while pending:
            ready, pending = wait(pending, num_returns=len(pending), timeout=_POLL_S)
            for ref in ready:
                self.done += 1
                self._draw()
                yield ref
        self._draw(final=True)

    async def __aiter__(self) -> AsyncIterator[Any]:
        from .._api import as_completed

        self._draw()
        async for ref in as_completed(self.refs):
            self.done += 1
            self._draw()
            yield ref
        self._draw(final=True)

    def get(self) -> list[Any]:
        """Wait for every ref with the bar drawn; their values, in the order of ``refs``."""
        from .._api import get

        for _ in self:
            pass
        return list(get(self.refs))


def progress(refs: Sequence[Any], desc: str = "", file: TextIO | None = None) -> Progress:
    """A progress bar over ``refs``: iterate it (or ``async for``) to get each ref as it
    completes, or call ``.get()`` for all values."""
    return Progress(refs, desc, file)
