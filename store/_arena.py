"""The shared-memory arena: one sparse tmpfs file per node session, mapped once
per process.

Writers copy an object's pickle stream and its out-of-band buffers into the
range the store gave them; readers get read-only views into the same pages.
Large copies are split across threads (numpy releases the GIL while copying),
which is what it takes to go past one core's memcpy speed.

Layout of one object in its range::

    [pickle stream][pad to 64][buffer 0][pad][buffer 1]...

and its ``meta`` (kept by the store, returned on open) is msgpack
``[stream_len, [[offset, length], ...]]`` relative to the range start.
"""

from __future__ import annotations

import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import msgpack

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Arena", "layout", "parallel_copy"]

_ALIGN = 64
_PARALLEL_MIN = 4 << 20
_COPY_THREADS = max(2, min(4, os.cpu_count() or 2))
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _copy_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_COPY_THREADS, thread_name_prefix="actorcore-copy")
        return _pool


def reset_after_fork() -> None:
    global _pool
    _pool = None


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def layout(stream_len: int, buffer_lens: list[int]) -> tuple[int, list[list[int]]]:
    """Total size and ``[[offset, length], ...]`` of the buffers for an object."""
    pos = _align(stream_len)
    spans = []
    for n in buffer_lens:
        spans.append([pos, n])
        pos = _align(pos + n)
    return max(pos, 1), spans


def _numpy() -> Any:
    """numpy, imported on first use: a process that never maps the arena (an
    idle driver or daemon) does not carry it."""
    import numpy

    return numpy


def parallel_copy(dst: np.ndarray, src: Any) -> None:
    """Copy bytes ``src`` into the uint8 array ``dst`` (same length), using threads."""
    np = _numpy()
    s = np.frombuffer(src, dtype=np.uint8) if not isinstance(src, np.ndarray) else src
    n = s.nbytes
    if n < _PARALLEL_MIN:
        dst[:n] = s
        return
    parts = _COPY_THREADS
    step = (n // parts + 4095) // 4096 * 4096
    futs = [
        _copy_pool().submit(np.copyto, dst[i : min(i + step, n)], s[i : min(i + step, n)])
        for i in range(0, n, step)
    ]
    for f in futs:
        f.result()


class Arena:
    """One process's mapping of the node's arena file."""

    def __init__(self, path: str, capacity: int) -> None:
        self.path = path
        self.capacity = capacity
        self._mm: mmap.mmap | None = None
        self._array: np.ndarray | None = None
        self._lock = threading.Lock()

    @classmethod
    def create(cls, path: str, capacity: int) -> Arena:
        """Make the (sparse) arena file; the node daemon does this once."""
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, capacity)
        finally:
            os.close(fd)
        return cls(path, capacity)

    def array(self) -> np.ndarray:
        """The whole arena as a writable uint8 array (mapped on first use)."""
        arr = self._array
        if arr is not None:
            return arr
        with self._lock:
            if self._array is None:
                fd = os.open(self.path, os.O_RDWR)
                try:
                    self._mm = mmap.mmap(fd, self.capacity, mmap.MAP_SHARED)
                finally:
                    os.close(fd)
                np = _numpy()
                self._array = np.frombuffer(self._mm, dtype=np.uint8)
            return self._array

    def write(self, offset: int, stream: bytes, buffers: list[Any], spans: list[list[int]]) -> None:
        """Copy an object's pickle stream and buffers into its range."""
        arr = self.array()
        arr[offset : offset + len(stream)] = memoryview(stream).cast("B")
        for buf, (rel, n) in zip(buffers, spans, strict=True):
            start = offset + rel
            parallel_copy(arr[start : start + n], memoryview(buf).cast("B"))

    def write_raw(self, offset: int, data: Any) -> None:
        arr = self.array()
        n = memoryview(data).nbytes
        parallel_copy(arr[offset : offset + n], data)

    def holder(self, offset: int, size: int) -> np.ndarray:
        """A read-only uint8 array over ``[offset, offset + size)``.

        Every view made from it (numpy arrays, memoryviews) keeps it alive, so
        its finalizer runs only when the last view is gone.
        """
        view = self.array()[offset : offset + size].view()
        view.flags.writeable = False
        return view

    def read_into(self, offset: int, size: int, fd: int) -> None:
        """Write the range to ``fd`` (spilling)."""
        mv = self.array()[offset : offset + size].data
        done = 0
        while done < size:
            done += os.write(fd, mv[done : done + (64 << 20)])

    def fill_from(self, offset: int, size: int, fd: int) -> None:
        """Read ``size`` bytes from ``fd`` into the range (restoring)."""
        mv = self.array()[offset : offset + size].data
        done = 0
        while done < size:
            n = os.readv(fd, [mv[done : done + (64 << 20)]])
            if n == 0:
                raise OSError(f"spill file ended after {done} of {size} bytes")
            done += n

    def close(self) -> None:
        with self._lock:
            self._array = None
            if self._mm is not None:
                try:
                    self._mm.close()
                except BufferError:
                    pass  # views are still alive; the mapping goes with them
                self._mm = None


def encode_meta(stream_len: int, spans: list[list[int]]) -> bytes:
    return msgpack.packb([stream_len, spans])


def decode_meta(meta: bytes) -> tuple[int, list[list[int]]]:
    stream_len, spans = msgpack.unpackb(meta)
    return stream_len, spans
