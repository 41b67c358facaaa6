"""Resource shapes: plain ``dict[str, float]`` and the arithmetic on them."""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["add", "fits", "is_empty", "missing", "normalize", "subtract"]

_EPS = 1e-9


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
