"""Utilities users of Ray expect: an actor pool and a queue (see :mod:`actorcore.util`)."""

__all__: list[str] = []
