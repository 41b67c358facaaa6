"""The autoscaling decision: how many replicas the load asks for, and when to act on it."""

from __future__ import annotations

import math

from ._config import AutoscalingConfig

__all__ = ["AutoscalingPolicy"]


class AutoscalingPolicy:
    """Turns (time, replicas now, requests held) into the number of replicas wanted.

    A new number is taken only after the load has asked for a change in the
    same direction for the configured delay, so a burst or a lull shorter than
    the delay changes nothing.
    """

    def __init__(self, config: AutoscalingConfig) -> None:
        self.config = config
        self._up_since: float | None = None
        self._down_since: float | None = None

    def wanted(self, ongoing: int) -> int:
        c = self.config
        raw = math.ceil(ongoing / c.target_ongoing_requests)
        return max(c.min_replicas, min(c.max_replicas, raw))

    def decide(self, now: float, current: int, ongoing: int) -> int:
        want = self.wanted(ongoing)
        if want > current:
            self._down_since = None
            if self._up_since is None:
                self._up_since = now
            if now - self._up_since >= self.config.upscale_delay_s:
                self._up_since = None
                return want
        elif want < current:
            self._up_since = None
            if self._down_since is None:
                self._down_since = now
            if now - self._down_since >= self.config.downscale_delay_s:
                self._down_since = None
                return want
        else:
            self._up_since = self._down_since = None
        return current
