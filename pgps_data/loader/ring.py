"""A shared-memory byte ring through which loader workers hand crops to the main process.

Returning numpy crops through a pipe pickles them (about 1 ms per MB on a 2-core machine)
and a new shared-memory segment per crop costs a system call and a page-fault storm each;
writing into one mapping created before the workers start and passing only an offset
costs almost nothing. Regions are allocated and released in FIFO order, which is exactly
the order requests are dispatched and their crops collated (results come back in order),
so the ring needs no free lists: a region is reused only after the batch that read it has
copied it out.

The mapping is an anonymous memory file (``memfd`` on Linux, an unlinked temporary file
elsewhere) whose descriptor the workers inherit: it has no name, so nothing can leak in
/dev/shm when a process is killed; the memory goes when the last process holding it ends.
After the ring's bytes come ``slots`` 8-byte status words, one per worker: the request a
worker is reading (its sequence number, or -1), so a worker that dies mid-read can be
named with the request it held.
"""

from __future__ import annotations

import mmap
import os
import sys
import tempfile
from collections import deque

import numpy as np

ALIGN = 64
IDLE = -1  # a status word's value while its worker reads nothing


class SharedRing:
    """FIFO allocator over one shared mapping (created by the main process).

    Not thread-safe: its one user (:class:`~pgps_data.loader.workers.CropWorkers`) calls it
    under its own lock.
    """

    def __init__(self, capacity: int, slots: int = 0):
        self.capacity = _align(max(int(capacity), ALIGN))
        self.slots = int(slots)
        self.nbytes = self.capacity + 8 * self.slots
        self.fd = _anonymous_file(self.nbytes)
        self._map = mmap.mmap(self.fd, self.nbytes)
        self.status = np.ndarray((self.slots,), np.int64, buffer=self._map, offset=self.capacity)
        self.status[:] = IDLE
        self._regions: deque[tuple[int, int]] = deque()
        self._head = 0

    def allocate(self, nbytes: int) -> int | None:
        """Offset of a free region of ``nbytes``, or None while older regions fill the ring.

        Never blocks: the thread that allocates is the one that releases (module doc).
        """
        size = _align(nbytes)
        if size > self.capacity:
            raise ValueError(f"a request of {nbytes} bytes exceeds the ring ({self.capacity})")
        offset = self._fit(size)
        if offset is not None:
            self._regions.append((offset, size))
            self._head = offset + size
        return offset

    def release(self, offset: int) -> None:
        """Free the oldest region, which must start at ``offset`` (FIFO order)."""
        if not self._regions or self._regions[0][0] != offset:
            raise RuntimeError(f"ring regions must be released in order (got {offset})")
        self._regions.popleft()
        if not self._regions:
            self._head = 0

    def view(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        return np.ndarray(shape, dtype=dtype, buffer=self._map, offset=offset)

    def close(self) -> None:
        """Unmap and drop the descriptor. Call only once no thread can still read a view."""
        self.status = np.zeros(0, np.int64)  # our own view of the mapping goes first
        try:
            self._map.close()
        except BufferError:  # a caller still holds a view: the mapping lives until it goes
            pass
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _fit(self, size: int) -> int | None:
        if not self._regions:
            return 0
        tail = self._regions[0][0]
        head = self._head
        if head > tail:  # the used span does not wrap: room after it, or at the start
            if head + size <= self.capacity:
                return head
            if size <= tail:  # wrap to the start (the rest of the end is skipped)
                return 0
            return None
        if head + size <= tail:  # the used span wraps: room only between head and tail
            return head
        return None


class RingView:
    """A worker's mapping of the ring, from the descriptor it inherited."""

    def __init__(self, fd: int, nbytes: int, capacity: int):
        self._map = mmap.mmap(fd, nbytes)
        self.capacity = capacity

    def view(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        return np.ndarray(shape, dtype=dtype, buffer=self._map, offset=offset)

    def status(self, slot: int) -> np.ndarray:
        """The one-element status word of worker ``slot`` (module doc)."""
        return np.ndarray((1,), np.int64, buffer=self._map, offset=self.capacity + 8 * slot)


def request_layout(n: int, channels: int, shape: tuple[int, ...]) -> tuple[int, int]:
    """Byte sizes of (images float32, labels uint8) of ``n`` crops; labels follow images."""
    vox = int(np.prod(shape))
    return _align(n * channels * vox * 4), _align(n * vox)


def _anonymous_file(nbytes: int) -> int:
    """A descriptor of ``nbytes`` of memory no path names (module doc)."""
    if sys.platform.startswith("linux"):
        fd = os.memfd_create("pgps-ring", os.MFD_CLOEXEC)
    else:
        fd = os.dup(tempfile.TemporaryFile().fileno())  # unlinked at once
    os.ftruncate(fd, nbytes)
    return fd


def _align(n: int) -> int:
    return (int(n) + ALIGN - 1) // ALIGN * ALIGN
