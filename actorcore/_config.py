"""One immutable, validated configuration object for the runtime.

Environment variables (``ACTORCORE_*``) are read here and nowhere else, once,
by :meth:`Config.from_env`; ``init(...)`` keyword arguments override them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Config"]

KiB = 1024
MiB = 1024 * KiB


def _env(name: str, default: str) -> str:
    return os.environ.get("ACTORCORE_" + name, default)


@dataclass(frozen=True, slots=True)
class Config:
    """Runtime settings shared by the driver, the node daemon and its workers."""

    num_cpus: float = 0.0  # 0 = os.cpu_count()
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)
    inline_threshold: int = 100 * KiB
    object_store_memory: int = 0  # 0 = 30% of RAM, capped by /dev/shm
    shm_root: str = "/dev/shm"
    spill_dir: str = ""  # "" = <tmp>/actorcore-spill-<session>
    # A frame is buffered whole before it is decoded: keep both limits modest.
    # Large values travel through the object store, never in a frame's header.
    max_frame_bytes: int = 64 * MiB  # ACTORCORE_MAX_FRAME_BYTES
    max_header_bytes: int = 8 * MiB  # ACTORCORE_MAX_HEADER_BYTES
    # Limits against a misbehaving local process or peer. Anyone who reaches a port
    # (or the abstract Unix socket, which has no file permissions) may open sockets
    # that never authenticate; a peer may stop reading what we send it.
    max_pending_handshakes: int = 64  # ACTORCORE_MAX_PENDING_HANDSHAKES: per listener
    handshake_timeout_s: float = 5.0  # ACTORCORE_HANDSHAKE_TIMEOUT_S: then dropped
    send_high_water_bytes: int = 64 * MiB  # ACTORCORE_SEND_HIGH_WATER_BYTES: senders wait
    send_max_queued_bytes: int = 512 * MiB  # ACTORCORE_SEND_MAX_QUEUED_BYTES: then dropped
    loop: str = "uvloop"  # "uvloop" or "asyncio": the runtime's own loops
    # idle workers kept warm (-1: one per CPU; -2: one on a node of a cluster, none
    # on a single machine's node, which stays small when idle: issue 14, <= 150 MB);
    # more fork from the fork server on demand in a few ms
    prestart_workers: int = -2
    # bytes of recently read store objects a process keeps mapped and pinned, so
    # reading one again needs no round trip (-1: an eighth of the store; 0: off)
    store_read_cache_bytes: int = -1
    lease_linger_s: float = 0.2
    max_tasks_in_flight_per_worker: int = 128
    actors_per_shared_worker: int = 10000
    shared_worker_threads: int = 8
    # a one-at-a-time sync actor's idle thread reads its caller's next call off the
    # socket itself (one wake-up per call instead of two; issue 14). Off by default
    # until measured on a quiet machine: on the shared one it won with the dashboard
    # off and lost with it on (bench/RESULTS.md). Off: the loop reads every call.
    actor_thread_reads: bool = False
    worker_idle_timeout_s: float = 60.0
    log_to_driver: bool = True
    default_max_retries: int = 3
    session_tag: str = ""  # appended to session names (test runs tell theirs apart)
    # clusters (etcd://...): node lease TTL, the cluster token, how to log in to etcd
    node_ttl_s: float = 2.0
    cluster_token: str = ""  # "" = the one in etcd (the first node makes it)
    etcd_user: str = ""
    etcd_password: str = ""
    etcd_ca: str = ""
    etcd_cert: str = ""
    etcd_key: str = ""
    # mutual TLS between machines (all three or none): this node's certificate and
    # key, and the cluster's CA that signed every node's certificate
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    unix_sockets: bool = True  # same-host peers over Unix sockets (False: TCP, as across hosts)
    attach_node: str = ""  # node id (or a prefix) to attach to among local nodes of a cluster
    transfer_chunk_bytes: int = 8 * MiB  # node-to-node object pulls: bytes per request
    transfer_timeout_s: float = 10.0  # a holder silent this long mid-pull is dropped
    transfer_serve_rate: float = 0.0  # bytes/s a node sends to pullers at most (0: no cap)
    # two-level scheduling (scheduler.SpillConfig): a busy node spills to the placer
    # once its queue holds this many items per CPU, or its oldest waited this long
    # (0, 0: whatever cannot start now; bench/RESULTS.md "Scheduling simulation")
    spill_queue_per_cpu: float = 0.0
    spill_max_wait_s: float = 0.0
    runtime_env_max_bytes: int = 100 * MiB  # a runtime_env package (zipped) at most
    # observability (actorcore._obs)
    task_events: bool = True  # record task history (and user metrics) for the state API
    task_history_size: int = 10_000  # tasks a node remembers
    metrics_export_port: int = 0  # Prometheus /metrics; 0 = any free port, -1 = off
    metrics_token: str = ""  # when set, /metrics asks for "Authorization: Bearer <it>"
    include_dashboard: bool = True
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8265  # taken: any free port

    def __post_init__(self) -> None:
        if self.inline_threshold < 0:
            raise ValueError("inline_threshold must be >= 0")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError("num_cpus and num_gpus must be >= 0")
        for k, v in self.resources.items():
            if not isinstance(k, str) or v < 0:
                raise ValueError(f"resources: {k!r} must be a name with a quantity >= 0")
            if k in ("CPU", "GPU"):
                raise ValueError(f"resources: use num_cpus/num_gpus, not resources[{k!r}]")
        if self.loop not in ("uvloop", "asyncio"):
            raise ValueError(f"loop must be 'uvloop' or 'asyncio', not {self.loop!r}")
        if not all(c.isalnum() or c in "-_" for c in self.session_tag):
            raise ValueError("session_tag may hold only letters, digits, '-' and '_'")
        if self.object_store_memory < 0:
            raise ValueError("object_store_memory must be >= 0")
        if not 64 * KiB <= self.max_header_bytes <= self.max_frame_bytes <= 1 << 31:
            raise ValueError(
                "need 64 KiB <= max_header_bytes <= max_frame_bytes <= 2 GiB, got "
                f"{self.max_header_bytes} and {self.max_frame_bytes}"
            )
        if self.inline_threshold * 4 > self.max_header_bytes:
            raise ValueError(
                f"inline_threshold ({self.inline_threshold}) must be at most a quarter of "
                f"max_header_bytes ({self.max_header_bytes}): inline values travel in headers"
            )
        if self.max_pending_handshakes < 1 or not self.handshake_timeout_s > 0:
            raise ValueError("max_pending_handshakes must be >= 1, handshake_timeout_s > 0")
        if not 0 < self.send_high_water_bytes <= self.send_max_queued_bytes:
            raise ValueError(
                "need 0 < send_high_water_bytes <= send_max_queued_bytes, got "
                f"{self.send_high_water_bytes} and {self.send_max_queued_bytes}"
            )
        if not self.node_ttl_s > 0:
            raise ValueError("node_ttl_s must be > 0")
        if self.transfer_chunk_bytes <= 0 or self.transfer_timeout_s <= 0:
            raise ValueError("transfer_chunk_bytes and transfer_timeout_s must be > 0")
        if any((self.tls_cert, self.tls_key, self.tls_ca)) and not all(
            (self.tls_cert, self.tls_key, self.tls_ca)
        ):
            raise ValueError("TLS needs all of tls_cert, tls_key and tls_ca (or none)")
        if self.spill_queue_per_cpu < 0 or self.spill_max_wait_s < 0:
            raise ValueError("spill_queue_per_cpu and spill_max_wait_s must be >= 0")
        if self.task_history_size < 1:
            raise ValueError("task_history_size must be >= 1")
        for port in (self.metrics_export_port, self.dashboard_port):
            if not -1 <= port <= 65535:
                raise ValueError(f"port {port} is out of range (-1 = off, 0 = any)")

    @classmethod
    def from_env(cls, **overrides: Any) -> Config:
        """Build the config from ``ACTORCORE_*`` variables, then ``overrides``."""
        values: dict[str, Any] = {
            "inline_threshold": int(_env("INLINE_THRESHOLD", str(100 * KiB))),
            "object_store_memory": int(_env("OBJECT_STORE_MEMORY", "0")),
            "shm_root": _env("SHM_ROOT", "/dev/shm"),
            "spill_dir": _env("SPILL_DIR", ""),
            "loop": _env("LOOP", "uvloop"),
            "log_to_driver": _env("LOG_TO_DRIVER", "1") not in ("0", "false", "no"),
            "lease_linger_s": float(_env("LEASE_LINGER_S", "0.2")),
            "session_tag": _env("SESSION_TAG", ""),
            "max_header_bytes": int(_env("MAX_HEADER_BYTES", str(8 * MiB))),
            "max_frame_bytes": int(_env("MAX_FRAME_BYTES", str(64 * MiB))),
            "max_pending_handshakes": int(_env("MAX_PENDING_HANDSHAKES", "64")),
            "handshake_timeout_s": float(_env("HANDSHAKE_TIMEOUT_S", "5")),
            "send_high_water_bytes": int(_env("SEND_HIGH_WATER_BYTES", str(64 * MiB))),
            "send_max_queued_bytes": int(_env("SEND_MAX_QUEUED_BYTES", str(512 * MiB))),
            "node_ttl_s": float(_env("NODE_TTL_S", "2")),
            "cluster_token": _env("TOKEN", ""),
            "etcd_user": _env("ETCD_USER", ""),
            "etcd_password": _env("ETCD_PASSWORD", ""),
            "etcd_ca": _env("ETCD_CA", ""),
            "etcd_cert": _env("ETCD_CERT", ""),
            "etcd_key": _env("ETCD_KEY", ""),
            "tls_cert": _env("TLS_CERT", ""),
            "tls_key": _env("TLS_KEY", ""),
            "tls_ca": _env("TLS_CA", ""),
            "unix_sockets": _env("UNIX_SOCKETS", "1") not in ("0", "false", "no"),
            "actor_thread_reads": _env("ACTOR_THREAD_READS", "0") not in ("0", "false", "no"),
            "attach_node": _env("ATTACH_NODE", ""),
            "spill_queue_per_cpu": float(_env("SPILL_QUEUE_PER_CPU", "0")),
            "spill_max_wait_s": float(_env("SPILL_MAX_WAIT_S", "0")),
            "task_events": _env("TASK_EVENTS", "1") not in ("0", "false", "no"),
            "metrics_export_port": int(_env("METRICS_EXPORT_PORT", "0")),
            "metrics_token": _env("METRICS_TOKEN", ""),
            "include_dashboard": _env("INCLUDE_DASHBOARD", "1") not in ("0", "false", "no"),
            "dashboard_host": _env("DASHBOARD_HOST", "127.0.0.1"),
            "dashboard_port": int(_env("DASHBOARD_PORT", "8265")),
            "runtime_env_max_bytes": int(_env("RUNTIME_ENV_MAX_BYTES", str(100 * MiB))),
        }
        known = {f.name for f in dataclasses.fields(cls)}
        for key, value in overrides.items():
            if key not in known:
                raise TypeError(f"unknown setting {key!r}")
            if value is not None:
                values[key] = value
        return cls(**values)

    def wire_limits(self) -> dict[str, Any]:
        """The keyword arguments of :class:`~actorcore._listener.Listener` for these limits
        (also those of ``open_connection``, less the handshake ones)."""
        return {
            "max_header_bytes": self.max_header_bytes,
            "max_frame_bytes": self.max_frame_bytes,
            "max_pending_handshakes": self.max_pending_handshakes,
            "handshake_timeout_s": self.handshake_timeout_s,
            "high_water": self.send_high_water_bytes,
            "max_queued": self.send_max_queued_bytes,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        return cls(**d)
