"""Where etcd is and how to log in: :class:`EtcdAddress` and :class:`EtcdOptions`."""

from __future__ import annotations

import dataclasses
import logging
import socket
import urllib.parse
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_NAMESPACE", "DEFAULT_PORT", "EtcdAddress", "EtcdOptions"]

logger = logging.getLogger(__name__)

DEFAULT_PORT: Final = 2379
DEFAULT_NAMESPACE: Final = "default"


@dataclass(frozen=True, slots=True)
class EtcdAddress:
    """A parsed ``etcd://host[:port][,host[:port]...][/NAME]`` address.

    ``host``/``port`` are the first endpoint; ``more`` holds the others.
    """

    host: str
    port: int
    namespace: str
    more: tuple[tuple[str, int], ...] = ()

    @classmethod
    def parse(cls, address: str) -> EtcdAddress:
        """Raises ValueError for anything but ``etcd://host[:port][,...][/NAME]``."""
        if not address.startswith("etcd://"):
            raise ValueError(f"expected etcd://host[:port][/NAME], got {address!r}")
        netloc, _, path = address[len("etcd://") :].partition("/")
        endpoints = [_endpoint(part, address) for part in netloc.split(",")]
        name = path.strip("/") or DEFAULT_NAMESPACE
        if "/" in name:
            raise ValueError(f"an etcd namespace is one path segment, got {name!r}")
        (host, port), *more = endpoints
        return cls(host, port, name, tuple(more))

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return [(self.host, self.port), *self.more]

    def grpc_target(self) -> str:
        """One gRPC target for every endpoint (``ipv4:``/``ipv6:`` lists fail over)."""
        hosts = [h for h, _ in self.endpoints]
        if len(hosts) > 1 and all(_is_ip(h, socket.AF_INET) for h in hosts):
            return "ipv4:" + ",".join(f"{h}:{p}" for h, p in self.endpoints)
        if len(hosts) > 1 and all(_is_ip(h, socket.AF_INET6) for h in hosts):
            return "ipv6:" + ",".join(f"[{h}]:{p}" for h, p in self.endpoints)
        if len(hosts) > 1:
            logger.warning("etcd endpoints by name: only %s is used", _hostport(*self.endpoints[0]))
        return _hostport(self.host, self.port)

    def __str__(self) -> str:
        return f"etcd://{','.join(_hostport(h, p) for h, p in self.endpoints)}/{self.namespace}"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_ip(host: str, family: int) -> bool:
    try:
        socket.inet_pton(family, host)
    except OSError:
        return False
    return True


def _endpoint(part: str, address: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit("//" + part)
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"bad port in etcd address {address!r}") from None
    if not parts.hostname:
        raise ValueError(f"expected etcd://host[:port][/NAME], got {address!r}")
    return parts.hostname, port


@dataclass(frozen=True, slots=True)
class EtcdOptions:
    """How to log in to etcd: user and password (etcd's auth), TLS files.

    ``ca`` alone gives server-authenticated TLS; with ``cert`` and ``key``
    the client proves itself too (etcd's ``--client-cert-auth``).
    """

    user: str | None = None
    password: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return dataclasses.asdict(self)
