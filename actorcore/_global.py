"""The process-wide runtime slot (one runtime per process)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import NotInitializedError

if TYPE_CHECKING:
    from ._runtime import CoreRuntime

__all__ = ["require", "runtime"]

runtime: CoreRuntime | None = None


def require() -> CoreRuntime:
    """The running runtime, or NotInitializedError saying to call init()."""
    rt = runtime
    if rt is None:
        raise NotInitializedError("actorcore is not initialized: call ac.init() first")
    return rt
