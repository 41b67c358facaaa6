"""Identifiers: compact random-prefix + counter byte strings.

Every process draws an 8-byte random prefix once; ids are that prefix plus a
monotonically increasing 8-byte counter, so making one costs no syscall and ids
are unique across processes and nodes without coordination.
"""

from __future__ import annotations

import itertools
import os

__all__ = ["new_id", "reset_after_fork", "short"]

_prefix = os.urandom(8)
_counter = itertools.count(1)


def new_id() -> bytes:
    """A fresh 16-byte id, unique in the cluster."""
    return _prefix + next(_counter).to_bytes(8, "big")


def reset_after_fork() -> None:
    """Draw a new prefix; call in a forked child before it makes any id."""
    global _prefix, _counter
    _prefix = os.urandom(8)
    _counter = itertools.count(1)


def short(ident: bytes) -> str:
    """A short printable form of an id, for logs and errors."""
    return ident.hex()[:8] + ident.hex()[-6:] if len(ident) > 8 else ident.hex()
