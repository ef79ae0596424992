"""Read-only memory maps of chunk files, shared by every fast reader of a process.

:mod:`pgps_data.store.fastread` reads every chunk, compressed or not, through a map of its
file: no syscall and no copy per chunk once a shard is mapped. The maps live in one
process-wide LRU (``PGPS_FASTREAD_OPEN_FILES`` files, default 128) that a forked worker
starts afresh. It also remembers which chunks of which file passed their checksum (the
reader's ``verify="once"`` policy): per path, for as long as the file keeps its identity
(device, inode, size, modification time). The identity is checked when a file is mapped
and by :meth:`OpenFiles.revalidate`, which each new reader calls the first time it uses a
file: a file rewritten since (re-converted, or damaged by a tool that wrote it) is mapped
and verified anew, and an evicted map costs no re-check.
"""

from __future__ import annotations

import math
import mmap
import os
from collections import OrderedDict

import numpy as np

from pgps_data.errors import PGPSInputError

__all__ = ["FILES", "OpenFiles"]


class OpenFiles:
    """Process-wide LRU of read-only file maps and views into them (fork-safe by pid).

    Every chunk, compressed or not, is read through a map: no syscall and no copy per
    chunk once a shard is mapped. Files must not be rewritten while a reader maps them.
    """

    def __init__(self, limit: int):
        self.limit, self.pid = limit, os.getpid()
        self.maps: OrderedDict[str, tuple[mmap.mmap, dict, set] | None] = OrderedDict()
        self.checked: dict[str, tuple[tuple, set]] = {}  # path: (file identity, offsets)

    def _entry(self, path: str) -> tuple[mmap.mmap, dict, set] | None:
        if os.getpid() != self.pid:  # a forked worker: do not share the parent's entries
            self.pid, self.maps, self.checked = os.getpid(), OrderedDict(), {}
        if path in self.maps:
            self.maps.move_to_end(path)
            return self.maps[path]
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                if self.checked.get(path, (None,))[0] != ident:
                    self.checked[path] = (ident, set())
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                entry = (m, {}, self.checked[path][1])
        except FileNotFoundError:
            entry = None
        except ValueError as e:  # an empty file cannot be mapped
            raise PGPSInputError(f"cannot map chunk file: {e} (rewrite the case)", path=path) from e
        self.maps[path] = entry
        if len(self.maps) > self.limit:
            self.maps.popitem(last=False)  # the map closes once its last view is gone
        return entry

    def revalidate(self, path: str) -> None:
        """Drop the map of ``path`` (and what was verified in it) if the file changed."""
        entry = self.maps.get(path, False)
        if entry is False or os.getpid() != self.pid:
            return  # not mapped here: it is checked when it is mapped
        try:
            st = os.stat(path)
            ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            ident = None
        known = self.checked.get(path, (None,))[0] if entry is not None else None
        if ident != known:
            del self.maps[path]
            self.checked.pop(path, None)

    def verified(self, path: str, offset: int) -> bool:
        """Whether the chunk at ``offset`` of this very file already passed its checksum."""
        entry = self._entry(path)
        return entry is not None and offset in entry[2]

    def set_verified(self, path: str, offset: int) -> None:
        entry = self._entry(path)
        if entry is not None:
            entry[2].add(offset)

    def size(self, path: str) -> int | None:
        entry = self._entry(path)
        return None if entry is None else len(entry[0])

    def view(self, path: str, offset: int, dtype, shape: tuple) -> np.ndarray | None:
        """An array view of ``path`` at ``offset`` (cached with the map); None if no file."""
        entry = self._entry(path)
        if entry is None:
            return None
        key = (offset, dtype, shape)
        arr = entry[1].get(key)
        if arr is None:
            count = math.prod(shape)
            if offset < 0 or offset + count * np.dtype(dtype).itemsize > len(entry[0]):
                raise PGPSInputError("chunk file is truncated (rewrite the case)", path=path)
            arr = entry[1][key] = np.frombuffer(entry[0], dtype, count, offset).reshape(shape)
        return arr


FILES = OpenFiles(int(os.environ.get("PGPS_FASTREAD_OPEN_FILES", "128")))
