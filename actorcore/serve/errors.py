"""The errors ``actorcore.serve`` raises, under :class:`ServeError`."""

from __future__ import annotations

from actorcore.errors import ActorCoreError

__all__ = ["BackPressureError", "DeploymentFailedError", "ServeError"]


class ServeError(ActorCoreError):
    """Base class of the errors raised by ``actorcore.serve``."""


class BackPressureError(ServeError, TimeoutError):
    """Raised when a request waited ``queue_timeout_s`` for a replica with room and found none.

    Every replica already ran ``max_ongoing_requests`` requests for that long.
    """


class DeploymentFailedError(ServeError, RuntimeError):
    """Raised by ``serve.run`` when a deployment's replicas keep failing to start."""
