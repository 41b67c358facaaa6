"""Resource shapes: plain ``dict[str, float]`` and the arithmetic on them."""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = [
    "NODE_AFFINITY_PREFIX",
    "NODE_AFFINITY_SOFT_PREFIX",
    "PLACED_KEY",
    "RUNTIME_ENV_PREFIX",
    "SCHEDULING_PREFIX",
    "SPREAD_KEY",
    "add",
    "fits",
    "is_empty",
    "missing",
    "node_affinity_shape",
    "normalize",
    "split_runtime_env",
    "strip_hints",
    "subtract",
]

_EPS = 1e-9

# ``node:<node id hex>`` in a shape pins the work to that node (hard node affinity).
NODE_AFFINITY_PREFIX = "node:"
_AFFINITY_MARK = 0.001
# Scheduling hints, also pseudo-resources of a shape, which a node drops before
# accounting: ``node_affinity_soft:<hex>`` (prefer that node), ``scheduling:spread``
# (SPREAD), ``scheduling:placed`` (the placer chose this node: never spill again).
NODE_AFFINITY_SOFT_PREFIX = "node_affinity_soft:"
SCHEDULING_PREFIX = "scheduling:"
SPREAD_KEY = SCHEDULING_PREFIX + "spread"
PLACED_KEY = SCHEDULING_PREFIX + "placed"
HINT_MARK = _AFFINITY_MARK


def strip_hints(shape: Mapping[str, float]) -> dict[str, float]:
    """``shape`` without its scheduling hints (soft affinity, SPREAD, placed)."""
    return {
        k: v
        for k, v in shape.items()
        if not (k.startswith(SCHEDULING_PREFIX) or k.startswith(NODE_AFFINITY_SOFT_PREFIX))
    }


# ``runtime_env:<hash>`` in a shape asks for a worker started with that runtime
# environment (``actorcore._runtime_env``): a placement constraint, not a quantity.
RUNTIME_ENV_PREFIX = "runtime_env:"


def split_runtime_env(shape: Mapping[str, float]) -> tuple[dict[str, float], str]:
    """``(shape without its runtime-env key, the env's hash or "")``."""
    env = ""
    out: dict[str, float] = {}
    for k, v in shape.items():
        if k.startswith(RUNTIME_ENV_PREFIX):
            env = k[len(RUNTIME_ENV_PREFIX) :]
        else:
            out[k] = v
    return out, env


def node_affinity_shape(shape: Mapping[str, float], node_id_hex: str) -> dict[str, float]:
    """``shape`` pinned to the node ``node_id_hex``.

    Raises:
        ValueError: if ``node_id_hex`` is not a hex node id.
    """
    try:
        ok = isinstance(node_id_hex, str) and len(bytes.fromhex(node_id_hex)) > 0
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"node_id must be a node's id in hex (see ac.nodes()), not {node_id_hex!r}"
        )
    return {**shape, NODE_AFFINITY_PREFIX + node_id_hex.lower(): _AFFINITY_MARK}


def normalize(shape: Mapping[str, float]) -> dict[str, float]:
    """Drop zero entries; reject negative or non-numeric ones."""
    out: dict[str, float] = {}
    for k, v in shape.items():
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise TypeError(f"resource {k!r} must be a number, not {type(v).__name__}")
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"resource {k!r} must be a finite number >= 0, not {v}")
        if v > 0:
            out[k] = float(v)
    return out


def is_empty(shape: Mapping[str, float]) -> bool:
    return not any(v > 0 for v in shape.values())


def fits(avail: Mapping[str, float], shape: Mapping[str, float]) -> bool:
    return all(avail.get(k, 0.0) + _EPS >= v for k, v in shape.items())


def missing(total: Mapping[str, float], shape: Mapping[str, float]) -> dict[str, float]:
    """What ``shape`` asks beyond ``total`` (empty when it could ever fit)."""
    return {k: v for k, v in shape.items() if total.get(k, 0.0) + _EPS < v}


def subtract(avail: dict[str, float], shape: Mapping[str, float]) -> None:
    for k, v in shape.items():
        avail[k] = avail.get(k, 0.0) - v


def add(avail: dict[str, float], shape: Mapping[str, float]) -> None:
    for k, v in shape.items():
        avail[k] = avail.get(k, 0.0) + v
