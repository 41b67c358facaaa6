"""First-fit range allocator for the shared-memory arena. Pure bookkeeping, no I/O.

First fit on purpose: freed low ranges are handed out again first, and their
pages are already touched in every process that mapped them, so writing into
them runs at memcpy speed instead of page-fault speed.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

__all__ = ["AllocatorStats", "ArenaAllocator"]

ALIGN = 64


def _round_up(n: int, align: int = ALIGN) -> int:
    return (n + align - 1) // align * align


@dataclass(frozen=True, slots=True)
class AllocatorStats:
    capacity: int
    used: int
    free: int
    largest_free: int
    blocks: int


class ArenaAllocator:
    """Hands out aligned ``[offset, offset + size)`` ranges of a fixed capacity."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be > 0")
        self.capacity = capacity - capacity % ALIGN
        self._free_offsets: list[int] = [0]  # sorted
        self._free_sizes: dict[int, int] = {0: self.capacity}
        self._used: dict[int, int] = {}  # offset -> rounded size
        self.used_bytes = 0

    def allocate(self, size: int) -> int | None:
        """The offset of a new range of ``size`` bytes, or None if no hole fits."""
        need = _round_up(max(size, 1))
        for i, off in enumerate(self._free_offsets):
            hole = self._free_sizes[off]
            if hole >= need:
                del self._free_sizes[off]
                if hole == need:
                    del self._free_offsets[i]
                else:
                    self._free_offsets[i] = off + need
                    self._free_sizes[off + need] = hole - need
                self._used[off] = need
                self.used_bytes += need
                return off
        return None

    def free(self, offset: int) -> None:
        """Give a range back; neighbouring holes merge."""
        size = self._used.pop(offset)
        self.used_bytes -= size
        offs = self._free_offsets
        i = bisect.bisect_left(offs, offset)
        # merge with the next hole
        if i < len(offs) and offs[i] == offset + size:
            size += self._free_sizes.pop(offs[i])
            del offs[i]
        # merge with the previous hole
        if i > 0 and offs[i - 1] + self._free_sizes[offs[i - 1]] == offset:
            prev = offs[i - 1]
            self._free_sizes[prev] += size
            return
        offs.insert(i, offset)
        self._free_sizes[offset] = size

    def fits_ever(self, size: int) -> bool:
        return _round_up(max(size, 1)) <= self.capacity

    def stats(self) -> AllocatorStats:
        largest = max(self._free_sizes.values(), default=0)
        return AllocatorStats(
            self.capacity,
            self.used_bytes,
            self.capacity - self.used_bytes,
            largest,
            len(self._used),
        )

    def validate(self) -> None:
        """Check invariants (tests switch this on): no overlap, sizes add up."""
        spans = sorted(
            [(o, s, "free") for o, s in self._free_sizes.items()]
            + [(o, s, "used") for o, s in self._used.items()]
        )
        pos = 0
        for off, size, _kind in spans:
            assert off == pos, f"gap or overlap at {off} (expected {pos})"
            pos = off + size
        assert pos == self.capacity, f"ranges cover {pos} of {self.capacity}"
        assert self._free_offsets == sorted(self._free_sizes)
        assert self.used_bytes == sum(self._used.values())
