"""actorcore.serve: replicated actor deployments behind handles and HTTP.

    from actorcore import serve

    @serve.deployment(num_replicas=2, max_ongoing_requests=8)
    class Model:
        async def __call__(self, request):
            return {"y": 2 * request.json()["x"]}

    serve.start(http_port=8000)
    handle = serve.run(Model.bind(), route_prefix="/model")
    await handle.remote(...)

Everything here is built on actorcore's public API: replicas and the
controller are actors, routing is ``.remote()`` plus in-flight counting.
"""

from ._api import (
    ApplicationStatus,
    DeploymentStatus,
    ReplicaStatus,
    ServeStatus,
    delete,
    get_app_handle,
    get_deployment_handle,
    run,
    shutdown,
    start,
    status,
)
from ._batching import batch
from ._config import AutoscalingConfig, DeploymentConfig
from ._deployment import Application, Deployment, deployment
from ._handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator
from ._http import HTTPResponse, Request, mount
from .errors import BackPressureError, DeploymentFailedError, ServeError

__all__ = [
    "Application",
    "ApplicationStatus",
    "AutoscalingConfig",
    "BackPressureError",
    "Deployment",
    "DeploymentConfig",
    "DeploymentFailedError",
    "DeploymentHandle",
    "DeploymentResponse",
    "DeploymentResponseGenerator",
    "DeploymentStatus",
    "HTTPResponse",
    "ReplicaStatus",
    "Request",
    "ServeError",
    "ServeStatus",
    "batch",
    "delete",
    "deployment",
    "get_app_handle",
    "get_deployment_handle",
    "mount",
    "run",
    "shutdown",
    "start",
    "status",
]
