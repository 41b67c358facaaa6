"""Handing events to a core that lives on the runtime's loop, from any thread.

Events go into one deque. A thread other than the loop's wakes the loop only
when no drain is already due (one ``call_soon_threadsafe`` per batch, not per
event); the loop thread feeds the core at once, unless it is feeding it
already (then the running drain picks the event up). No lock is shared with
other threads: the deque's append and popleft are atomic.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._runtime import CoreRuntime

__all__ = ["Inbox", "carry_out"]

logger = logging.getLogger(__name__)


def carry_out(instructions: list[Any], run: dict[type, Callable[[Any], None]]) -> None:
    """Carry out a core's instructions through its shell's table; one failing
    instruction is logged and never stops the ones after it."""
    for ins in instructions:
        try:
            run[type(ins)](ins)
        except Exception:
            logger.exception("carrying out %s failed", type(ins).__name__)


class Inbox:
    """The events waiting for one core; ``process(events)`` runs them on the loop."""

    __slots__ = ("_events", "_process", "_rt", "_scheduled", "draining")

    def __init__(self, rt: CoreRuntime, process: Callable[[list[Any]], None]) -> None:
        self._rt = rt
        self._process = process
        self._events: collections.deque[Any] = collections.deque()
        self._scheduled = False
        self.draining = False  # a drain is under way (read only outside)

    def post(self, event: Any) -> int:
        """Queue ``event`` for the core; any thread. From another thread than the
        loop's, returns how many events wait for the loop now (on it: 0)."""
        events = self._events
        events.append(event)
        rt = self._rt
        if threading.get_ident() == rt.loop_thread_id:
            if not self.draining:
                self.drain()
            return 0
        if self._scheduled:
            return len(events)  # a drain is due and will see this event
        self._scheduled = True
        try:
            rt.loop.call_soon_threadsafe(self.drain)
        except RuntimeError:
            pass  # the loop is closed: the runtime is shutting down
        return len(events)

    def post_all(self, events: list[Any]) -> None:
        """Queue several events, handled in one batch when on the loop; any thread."""
        self._events.extend(events)
        rt = self._rt
        if threading.get_ident() == rt.loop_thread_id:
            if not self.draining:
                self.drain()
            return
        if self._scheduled:
            return
        self._scheduled = True
        try:
            rt.loop.call_soon_threadsafe(self.drain)
        except RuntimeError:
            pass

    def wake(self) -> None:
        """Make sure a drain is due (another thread queued quietly and needs one)."""
        if self._scheduled:
            return
        self._scheduled = True
        try:
            self._rt.loop.call_soon_threadsafe(self.drain)
        except RuntimeError:
            pass

    def drain_if_idle(self) -> None:
        """On the loop: handle what is queued now, unless a drain is under way."""
        if self._events and not self.draining:
            self.drain()

    def caught_up(self) -> bool:
        """On the loop: handle what is queued now, unless a drain is under way (then
        False: the running drain handles what is queued meanwhile)."""
        if self.draining:
            return False
        if self._events:
            self.drain()
        return True

    def quiet(self) -> bool:
        """Whether every event queued so far has been handled (any thread).

        Read in this order: an event taken by a drain is handled before that
        drain ends, so "nothing queued, no drain running" means "all done".
        """
        return not self._events and not self.draining

    def put_quietly(self, event: Any) -> None:
        """Queue ``event`` without waking the loop (something else will, soon)."""
        self._events.append(event)

    def drain(self) -> None:
        """Feed the core every queued event, in order; on the loop thread."""
        self._scheduled = False  # before reading: an event added from now on schedules again
        if self._rt.handed_conns:  # frames a caller thread read come before these events
            self._rt.deliver_handed()
        self.draining = True
        events = self._events
        rt = self._rt
        try:
            while events:
                batch = []
                while events:
                    batch.append(events.popleft())
                try:
                    self._process(batch)
                except Exception:
                    logger.exception("the owner core failed on %d event(s)", len(batch))
                if rt.handed_conns:  # read meanwhile: a waiter just registered gets it now
                    rt.deliver_handed()
        finally:
            self.draining = False
