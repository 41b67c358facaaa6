"""``@serve.deployment`` and ``Deployment.bind``: what to run, before it runs.

A :class:`Deployment` is a class plus its :class:`DeploymentConfig`;
``bind(*args)`` makes an :class:`Application`, a tree whose arguments may be
other applications (composition): ``serve.run`` deploys the leaves first and
passes each parent a handle to its children.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from ._config import DeploymentConfig

__all__ = ["Application", "Deployment", "deployment"]


class Deployment:
    """A class made into a deployment; ``bind(...)`` it, then ``serve.run`` the result."""

    def __init__(self, cls: type, name: str, config: DeploymentConfig) -> None:
        if not inspect.isclass(cls):
            raise TypeError(f"@serve.deployment takes a class, not {type(cls).__name__}")
        self.func_or_class = cls
        self.name = name
        self.config = config

    def options(self, *, name: str | None = None, **changes: Any) -> Deployment:
        """A copy with some settings changed (the same keywords as ``@serve.deployment``)."""
        return Deployment(
            self.func_or_class, name or self.name, self.config.with_options(**changes)
        )

    def bind(self, *args: Any, **kwargs: Any) -> Application:
        """The application that runs this deployment built with ``cls(*args, **kwargs)``."""
        return Application(self, args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"deployment {self.name} cannot be called directly: use "
            f"serve.run({self.name}.bind(...)) and call the handle it returns"
        )

    def __repr__(self) -> str:
        return f"Deployment({self.name})"


@dataclass(frozen=True, eq=False)
class Application:
    """A bound deployment: the deployment and its constructor arguments."""

    deployment: Deployment
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def walk(self) -> list[Application]:
        """Every application in this tree, children before parents, each once."""
        out: list[Application] = []
        seen: set[int] = set()

        def visit(app: Application) -> None:
            if id(app) in seen:
                return
            seen.add(id(app))
            for child in _children(app.args, app.kwargs):
                visit(child)
            out.append(app)

        visit(self)
        return out


def _children(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Application]:
    found: list[Application] = []
    for v in [*args, *kwargs.values()]:
        if isinstance(v, Application):
            found.append(v)
        elif isinstance(v, list | tuple):
            found.extend(x for x in v if isinstance(x, Application))
        elif isinstance(v, dict):
            found.extend(x for x in v.values() if isinstance(x, Application))
    return found


def substitute(value: Any, handles: dict[int, Any]) -> Any:
    """``value`` with every Application (top level or one container deep) replaced by its handle."""
    if isinstance(value, Application):
        return handles[id(value)]
    if isinstance(value, list | tuple):
        return type(value)(
            substitute(x, handles) if isinstance(x, Application) else x for x in value
        )
    if isinstance(value, dict):
        return {
            k: substitute(x, handles) if isinstance(x, Application) else x for k, x in value.items()
        }
    return value


def deployment(
    _cls: type | None = None,
    *,
    name: str | None = None,
    num_replicas: int | None = None,
    max_ongoing_requests: int | None = None,
    actor_options: dict[str, Any] | None = None,
    ray_actor_options: dict[str, Any] | None = None,
    autoscaling_config: Any = None,
    health_check_period_s: float | None = None,
    health_check_timeout_s: float | None = None,
    graceful_shutdown_timeout_s: float | None = None,
    queue_timeout_s: float | None = None,
    max_request_retries: int | None = None,
) -> Any:
    """Make a class a deployment: ``@serve.deployment`` or ``@serve.deployment(num_replicas=2)``.

    Raises:
        TypeError, ValueError: an unknown or out-of-range setting.
    """
    given = {
        "num_replicas": num_replicas,
        "max_ongoing_requests": max_ongoing_requests,
        "actor_options": actor_options if actor_options is not None else ray_actor_options,
        "autoscaling_config": autoscaling_config,
        "health_check_period_s": health_check_period_s,
        "health_check_timeout_s": health_check_timeout_s,
        "graceful_shutdown_timeout_s": graceful_shutdown_timeout_s,
        "queue_timeout_s": queue_timeout_s,
        "max_request_retries": max_request_retries,
    }
    config = DeploymentConfig().with_options(**{k: v for k, v in given.items() if v is not None})

    def make(cls: type) -> Deployment:
        return Deployment(cls, name or cls.__name__, config)

    if _cls is not None:
        return make(_cls)
    return make
