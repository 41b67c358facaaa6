"""Users' own metrics, exported at ``/metrics`` by the node where they are recorded.

Usable anywhere: in the driver, in tasks, in actors (and picklable, so a
metric made in the driver can be used by the tasks it sends)::

    from actorcore.util.metrics import Counter, Gauge, Histogram

    requests = Counter("app_requests", "Requests served", tag_keys=("route",))
    requests.inc(tags={"route": "/a"})
    Gauge("app_queue_depth").set(12)
    Histogram("app_latency_s", boundaries=[0.01, 0.1, 1]).observe(0.04)

Recording appends one sample to the process's batch of task events (no
lock, no I/O); the node daemon sums counters, keeps the last gauge value and
fills histogram buckets. Each series is labelled with ``node_id`` and the
metric's tags.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .._task_events import record_metric

__all__ = ["Counter", "Gauge", "Histogram"]

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_defined: set[str] = set()  # metrics whose definition this process has sent


class _Metric:
    kind = ""

    def __init__(
        self,
        name: str,
        description: str = "",
        tag_keys: Iterable[str] | None = None,
        boundaries: Iterable[float] | None = None,
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"metric name {name!r} must match [a-zA-Z_:][a-zA-Z0-9_:]* (Prometheus names)"
            )
        keys = tuple(tag_keys or ())
        if any(not isinstance(k, str) or not _NAME.match(k) or k == "node_id" for k in keys):
            raise ValueError(f"tag keys {keys!r} must be Prometheus label names other than node_id")
        self._name = name
        self._description = description
        self._tag_keys = keys
        self._boundaries = sorted(float(b) for b in boundaries) if boundaries else []
        self._default_tags: dict[str, str] = {}

    @property
    def info(self) -> dict[str, Any]:
        return {"name": self._name, "description": self._description, "tag_keys": self._tag_keys}

    def set_default_tags(self, default_tags: dict[str, str]) -> _Metric:
        """Tags used when a record does not give them."""
        unknown = set(default_tags) - set(self._tag_keys)
        if unknown:
            raise ValueError(f"unknown tag keys {sorted(unknown)}; declared {self._tag_keys}")
        self._default_tags = {k: str(v) for k, v in default_tags.items()}
        return self

    def _record(self, value: float, tags: dict[str, str] | None) -> None:
        if self._name not in _defined:
            _defined.add(self._name)
            record_metric(
                (
                    "def",
                    self._name,
                    self.kind,
                    self._description,
                    list(self._tag_keys),
                    self._boundaries,
                )
            )
        if tags or self._default_tags:
            merged = {**self._default_tags, **(tags or {})}
            if len(merged) != len(self._tag_keys) or set(merged) - set(self._tag_keys):
                raise ValueError(f"tags {sorted(merged)} do not match tag_keys {self._tag_keys}")
            values = [str(merged[k]) for k in self._tag_keys]
        elif self._tag_keys:
            raise ValueError(f"{self._name} needs tags for {self._tag_keys}")
        else:
            values = []
        record_metric((self.kind, self._name, values, float(value)))


class Counter(_Metric):
    """A value that only grows (exported as ``<name>_total``)."""

    kind = "counter"

    def __init__(
        self, name: str, description: str = "", tag_keys: Iterable[str] | None = None
    ) -> None:
        super().__init__(name, description, tag_keys)

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        """Add ``value`` (> 0).

        Raises:
            ValueError: a negative value, or tags that do not match ``tag_keys``.
        """
        if value < 0:
            raise ValueError("a counter only grows: inc() takes a value >= 0")
        self._record(value, tags)


class Gauge(_Metric):
    """A value that goes up and down; the node keeps the last one set."""

    kind = "gauge"

    def __init__(
        self, name: str, description: str = "", tag_keys: Iterable[str] | None = None
    ) -> None:
        super().__init__(name, description, tag_keys)

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self._record(value, tags)


class Histogram(_Metric):
    """Observations counted into buckets with upper bounds ``boundaries``."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        description: str = "",
        boundaries: Iterable[float] | None = None,
        tag_keys: Iterable[str] | None = None,
    ) -> None:
        super().__init__(name, description, tag_keys, boundaries)

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        self._record(value, tags)
