"""``actorcore serve status``: applications, deployments and replicas of the local node."""

from __future__ import annotations

import argparse

import actorcore as ac

from ._api import ServeStatus, status

__all__ = ["main", "render"]


def render(st: ServeStatus) -> str:
    """The status as text: one block per application, one row per replica."""
    if not st.applications:
        return "no serve applications are running"
    lines = []
    for name, app in st.applications.items():
        lines.append(f"app {name}: {app.status} (route prefix {app.route_prefix})")
        for dname, d in app.deployments.items():
            running = sum(1 for r in d.replicas if r.state == "RUNNING")
            lines.append(f"  deployment {dname}: {d.status}, {running}/{d.target_replicas} running")
            if d.message:
                lines.append(f"    {d.message}")
            for r in d.replicas:
                lines.append(
                    f"    {r.replica_id:<28} {r.state:<9} pid {r.pid}  ongoing {r.ongoing}"
                )
    for node, p in st.proxies.items():
        lines.append(f"http proxy on node {node[:12]}: {p['host']}:{p['port']}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    attached = not ac.is_initialized()
    if attached:
        ac.init(address="auto")
    try:
        print(render(status()))
    finally:
        if attached:
            ac.shutdown()
    return 0
