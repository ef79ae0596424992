"""One writer per store: an exclusive ``flock`` held for the whole of a conversion.

Two conversions writing one store at once delete and rewrite each other's cases (a case
marked complete without its arrays). So a conversion takes an exclusive lock on
``<store>/.pgps.lock`` before it reads or writes anything of the store, and keeps it until
the end. Why this shape:

- ``flock`` is released by the kernel when its holder dies (kill -9, out of memory, a
  lost node), so a rerun never needs cleaning up after a crash.
- The file sits inside the store folder (created first if need be), so it exists before
  the root is written, and ``--overwrite`` (which deletes only pgps's own entries of the
  store, see :mod:`pgps_data.store.write`) never deletes it while it is held.
- The holder writes ``host:pid`` into it once it holds the lock, so a second run refuses
  with one line naming who holds the store. (Nothing else should probe the lock with
  ``flock``: a probe that holds it for an instant makes a starting conversion refuse.)
- The holder removes the file when it is done. An acquirer checks, once it holds the lock,
  that the file it locked is still the one at the path (not one a finishing holder just
  unlinked) and starts over if not, so removing it never lets two holders in.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from pgps_data.errors import PGPSInputError

__all__ = ["LOCK_NAME", "case_lock", "is_case_lock", "store_lock"]

LOCK_NAME = ".pgps.lock"
_HOLDER_WAIT_S = 1.0  # a new holder writes its name just after locking


@contextlib.contextmanager
def store_lock(store: str | os.PathLike, activity: str = "conversion") -> Iterator[Path]:
    """Hold the store's exclusive lock for the ``with`` block; yields the lock file's path.

    Creates the store folder (and its parents) when it does not exist yet, and removes it
    again on the way out if it is still empty then (nothing was written). Raises
    PGPSInputError, one line naming the holder, when another process holds the lock.
    ``activity`` names what holds such a lock in that line ("conversion", "training run").
    """
    store = Path(store)
    created = not store.exists()
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PGPSInputError(f"{store}: cannot create the store folder ({exc.strerror})") from None
    path = store / LOCK_NAME
    fd = _acquire(store, path, activity)
    try:
        yield path
    finally:
        _release(path, fd)
        if created:
            with contextlib.suppress(OSError):  # only ever removes an empty folder
                store.rmdir()


@contextlib.contextmanager
def case_lock(store: str | os.PathLike, case_id: str) -> Iterator[Path]:
    """One writer per case folder: an exclusive ``flock`` on ``<store>/.pgps.lock.<id>``
    for the ``with`` block (``case_id`` already checked safe by the caller).

    The conversion's store lock keeps other conversions out; this keeps two tasks of one
    conversion apart. On a cluster a task can run twice at once: the scheduler loses a
    worker (a missed heartbeat, a network split) and reruns its case elsewhere while the
    first copy still writes. The second copy then refuses in one line (the case stays
    unfinished, and a rerun writes it) instead of deleting the folder under the first.
    Like the store lock it dies with its holder, so a killed worker never blocks a retry.
    """
    store = Path(store)
    path = store / f"{LOCK_NAME}.{case_id}"
    fd = _acquire(store, path, f"conversion task (case {case_id})")
    try:
        yield path
    finally:
        _release(path, fd)


def is_case_lock(name: str) -> bool:
    """Whether a store root entry is a case's lock file (:func:`case_lock`)."""
    return name.startswith(f"{LOCK_NAME}.")


def _acquire(store: Path, path: Path, activity: str) -> int:
    for _ in range(100):  # each retry means a holder finished in between; 100 is plenty
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise PGPSInputError(
                f"{path}: cannot create the store's lock file ({exc.strerror}); "
                "check that the output folder is writable"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd) if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise PGPSInputError(
                    f"{path}: cannot lock the store ({exc.strerror}); the file system must "
                    "support flock (use a local disk or an NFSv4 mount)"
                ) from None
            raise PGPSInputError(
                f"{store}: another {activity} is writing this folder (lock held by "
                f"{holder or 'an unknown process'}); wait for it to finish or stop it, "
                "then rerun (the lock goes away with its holder)"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            _write_holder(fd)
            return fd
        os.close(fd)  # we locked a file its holder had just removed: start over
    raise PGPSInputError(f"{path}: the store's lock changed hands too often; rerun")


def _release(path: Path, fd: int) -> None:
    try:
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            os.unlink(path)  # still locked: nobody can take this file in between
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_holder(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()}:{os.getpid()}\n".encode(), 0)
    except OSError:  # a full disk: the lock holds all the same, only its name is missing
        pass


def _read_holder(fd: int) -> str | None:
    deadline = time.monotonic() + _HOLDER_WAIT_S
    while True:
        try:
            text = os.pread(fd, 512, 0).decode(errors="replace").strip()
        except OSError:
            text = ""
        if text or time.monotonic() > deadline:
            return text or None
        time.sleep(0.02)
