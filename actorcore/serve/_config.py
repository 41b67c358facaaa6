"""Deployment settings: one frozen, validated object per deployment."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

__all__ = ["AutoscalingConfig", "DeploymentConfig"]


def _positive(name: str, v: Any, *, zero_ok: bool = False, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    ok = isinstance(v, kinds) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or v < 0 or (v == 0 and not zero_ok):
        what = "an int" if integer else "a number"
        raise ValueError(f"{name} must be {what} {'>= 0' if zero_ok else '> 0'}, not {v!r}")


@dataclass(frozen=True)
class AutoscalingConfig:
    """How many replicas to run for the load: ``ceil(ongoing / target_ongoing_requests)``.

    A change up (down) is made once it has been wanted for ``upscale_delay_s``
    (``downscale_delay_s``) in a row.
    """

    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 3.0
    downscale_delay_s: float = 60.0
    initial_replicas: int | None = None

    def __post_init__(self) -> None:
        # zero would need the routers' queues in the metrics to ever scale up again
        _positive("min_replicas", self.min_replicas, integer=True)
        _positive("max_replicas", self.max_replicas, integer=True)
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        _positive("target_ongoing_requests", self.target_ongoing_requests)
        _positive("upscale_delay_s", self.upscale_delay_s, zero_ok=True)
        _positive("downscale_delay_s", self.downscale_delay_s, zero_ok=True)
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")

    @classmethod
    def of(cls, value: AutoscalingConfig | dict[str, Any]) -> AutoscalingConfig:
        if isinstance(value, AutoscalingConfig):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"autoscaling_config must be a dict, not {type(value).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(value) - known
        if unknown:
            raise TypeError(
                f"unknown autoscaling_config key(s) {sorted(unknown)}; valid: {sorted(known)}"
            )
        return cls(**value)


@dataclass(frozen=True)
class DeploymentConfig:
    """Everything ``@serve.deployment`` takes besides the class.

    ``queue_timeout_s`` bounds how long a caller waits for a replica with room
    (then :class:`BackPressureError`); ``graceful_shutdown_timeout_s`` bounds how
    long a replica being removed may take to finish the requests it holds.
    """

    num_replicas: int = 1
    max_ongoing_requests: int = 5
    actor_options: dict[str, Any] = field(default_factory=dict)
    autoscaling_config: AutoscalingConfig | None = None
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0
    graceful_shutdown_timeout_s: float = 20.0
    queue_timeout_s: float = 30.0
    max_request_retries: int = 3

    def __post_init__(self) -> None:
        _positive("num_replicas", self.num_replicas, zero_ok=True, integer=True)
        _positive("max_ongoing_requests", self.max_ongoing_requests, integer=True)
        if not isinstance(self.actor_options, dict):
            raise TypeError("actor_options must be a dict of actor options")
        bad = {"name", "namespace", "lifetime", "get_if_exists"} & set(self.actor_options)
        if bad:
            raise ValueError(f"actor_options may not set {sorted(bad)}: serve names its replicas")
        for name in (
            "health_check_period_s",
            "health_check_timeout_s",
            "graceful_shutdown_timeout_s",
            "queue_timeout_s",
        ):
            _positive(name, getattr(self, name))
        _positive("max_request_retries", self.max_request_retries, zero_ok=True, integer=True)

    def with_options(self, **changes: Any) -> DeploymentConfig:
        if "autoscaling_config" in changes and changes["autoscaling_config"] is not None:
            changes["autoscaling_config"] = AutoscalingConfig.of(changes["autoscaling_config"])
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(
                f"unknown deployment option(s) {sorted(unknown)}; valid: {sorted(known)}"
            )
        return replace(self, **changes)

    def initial_replicas(self) -> int:
        a = self.autoscaling_config
        if a is None:
            return self.num_replicas
        return a.initial_replicas if a.initial_replicas is not None else a.min_replicas
