"""A shared-memory byte ring through which workers hand crops to the main process.

Returning numpy crops through torchdata's queues pickles them (~1 ms per MB here) and
returning torch tensors costs a new shared-memory segment per tensor; writing into a ring
allocated before the workers start and passing only an offset costs almost nothing
(notes/torchdata_nodes.md). Regions are allocated and released in FIFO order, which is
exactly the order requests are issued and batches are collated (``in_order=True``), so
the ring needs no free lists: a region is reused only after the batch that read it has
copied it out.
"""

from __future__ import annotations

import threading
from collections import deque
from multiprocessing import shared_memory

import numpy as np

ALIGN = 64


class SharedRing:
    """FIFO allocator over one shared-memory segment (created by the main process)."""

    def __init__(self, capacity: int):
        self.capacity = _align(max(int(capacity), ALIGN))
        self._shm = shared_memory.SharedMemory(create=True, size=self.capacity)
        self.name = self._shm.name
        self._regions: deque[tuple[int, int]] = deque()
        self._head = 0
        self._cond = threading.Condition()
        self._closed = False

    def allocate(self, nbytes: int, timeout: float | None = None) -> int:
        """Offset of a free region of ``nbytes``; blocks until older regions are released."""
        size = _align(nbytes)
        if size > self.capacity:
            raise ValueError(f"a request of {nbytes} bytes exceeds the ring ({self.capacity})")
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("the ring was closed")
                offset = self._fit(size)
                if offset is not None:
                    self._regions.append((offset, size))
                    self._head = offset + size
                    return offset
                if not self._cond.wait(timeout=timeout if timeout is not None else 1.0):
                    if timeout is not None:
                        raise TimeoutError("no space in the shared ring")

    def release(self, offset: int) -> None:
        """Free the oldest region, which must start at ``offset`` (FIFO order)."""
        with self._cond:
            if not self._regions or self._regions[0][0] != offset:
                raise RuntimeError(f"ring regions must be released in order (got {offset})")
            self._regions.popleft()
            if not self._regions:
                self._head = 0
            self._cond.notify_all()

    def reset(self) -> None:
        """Forget every region (after the pipeline that used them was torn down)."""
        with self._cond:
            self._regions.clear()
            self._head = 0
            self._cond.notify_all()

    def view(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        return np.ndarray(shape, dtype=dtype, buffer=self._shm.buf, offset=offset)

    @property
    def in_use(self) -> int:
        with self._cond:
            return sum(size for _, size in self._regions)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        try:
            self._shm.close()
            self._shm.unlink()
        except (FileNotFoundError, BufferError):
            pass

    def _fit(self, size: int) -> int | None:
        if not self._regions:
            return 0
        tail = self._regions[0][0]
        head = self._head
        if head > tail or (head == tail and not self._regions):
            if head + size <= self.capacity:
                return head
            if size <= tail:  # wrap to the start
                return 0
            return None
        if head + size <= tail:
            return head
        return None


class RingView:
    """A worker's attachment to the ring, by name (opened lazily once per process)."""

    def __init__(self, name: str):
        # Attaching registers the name with the process tree's one resource tracker again;
        # its registry is a set, so the main process's unlink still unregisters it cleanly.
        self._shm = shared_memory.SharedMemory(name=name, create=False)

    def view(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        return np.ndarray(shape, dtype=dtype, buffer=self._shm.buf, offset=offset)


def request_layout(n: int, channels: int, shape: tuple[int, ...]) -> tuple[int, int]:
    """Byte sizes of (images float32, labels uint8) of ``n`` crops; labels follow images."""
    vox = int(np.prod(shape))
    return _align(n * channels * vox * 4), _align(n * vox)


def _align(n: int) -> int:
    return (int(n) + ALIGN - 1) // ALIGN * ALIGN
