"""Replacing a small file so that a reader, a kill or a full disk never sees half of it."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path: str | os.PathLike, data: bytes, *, tmp: str | os.PathLike | None = None
                 ) -> None:
    """Write ``data`` to ``path``: into ``tmp`` beside it (default: a hidden
    ``.<name>.<pid>.tmp``), fsynced, then renamed over ``path``, so readers see the old
    file or the new one. ``tmp`` is removed on any failure, which propagates."""
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()
