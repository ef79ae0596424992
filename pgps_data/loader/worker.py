"""What one loader worker process does: read crop requests into the shared ring.

A worker is a fresh interpreter (``python -c`` running :func:`main`, started by
:class:`~pgps_data.loader.workers.CropWorkers`): it imports only numpy, zarr and the
store, never torch nor the user's script, and inherits no thread, lock or signal handler
of its parent. It opens the store itself (volumes never cross process boundaries, only
crops do), maps the ring from the descriptor it inherited, and then serves bundles from
its pipe until the pipe ends or the loader terminates it:

    main -> worker   (store path, label pad), then
                     (bundle id, [(sequence number, ring offset, CropRequest), ...])
    worker -> main   ("ok", bundle id, [(origins, picked, (requests, bytes)), ...])
                     ("error", bundle id, one line, sequence number, type name, reason)

It dies with its parent: Linux kills it when the parent dies (``PR_SET_PDEATHSIG``), a
watch thread does elsewhere, and an idle worker sees its pipe end. Ctrl-C is the parent's
to handle (a terminal sends SIGINT to the whole process group), so workers ignore it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from pgps_data.labels import Labels
from pgps_data.loader.ring import IDLE, RingView, request_layout
from pgps_data.loader.sampling import CropRequest, plan_origins
from pgps_data.store.remote import counts as remote_counts
from pgps_data.store.store import Store, open_store


class CropReader:
    """Reads crop requests of one store into the ring; one per worker process (and one in
    the loader's own thread when it has no workers)."""

    def __init__(self, store: Store, label_pad: int = 0):
        self.store = store
        self.label_pad = int(label_pad)
        self.classes = Labels.from_store(store).forced_classes()
        self.ignore = store.ignore_label is not None

    def read(self, request: CropRequest, ring: Any, offset: int
             ) -> tuple[list[tuple[int, int, int]], list[int], tuple[int, int]]:
        """Read ``request``'s crops into ``ring`` at ``offset``: images float32
        (n, C, *shape), then labels uint8 (n, *shape) with ``shape`` its read shape.
        Returns the crop origins (of the request's box: the initial box with
        augmentation), the class index picked per crop (-1: not forced) and the
        (requests, bytes) this read fetched from a remote store ((0, 0) for a local one)."""
        before = remote_counts()
        case = self.store[request.case_id]
        # The locations per class are kept with the case, so the store's case cache is the
        # only cache of cases (store.CASE_CACHE).
        locations = case.class_locations(self.classes)
        annotated = case.annotated() if self.ignore else None
        origins, picked = plan_origins(request, case.shape, locations, annotated)
        shape = request.read_shape
        n = len(origins)
        img_bytes, _ = request_layout(n, case.channels, shape)
        out_image = ring.view(offset, np.dtype(np.float32), (n, case.channels, *shape))
        out_label = ring.view(offset + img_bytes, np.dtype(np.uint8), (n, *shape))
        offset3 = request.read_offset  # -margin; with augmentation 0 or floor(I/2) - F//2
        starts = [tuple(o + d for o, d in zip(org, offset3)) for org in origins]
        case.read_many(starts, shape, out_image=out_image, out_label=out_label,
                       label_pad=self.label_pad)
        after = remote_counts()
        return origins, picked, (after[0] - before[0], after[1] - before[1])


def failure_line(request: CropRequest, exc: BaseException) -> str:
    """The one line a failed read becomes (the main process raises it as LoaderWorkerError)."""
    return (f"loader worker (pid {os.getpid()}) failed on case {request.case_id!r}, "
            f"step {request.step}, patch {list(request.patch)}, slots {list(request.slots)}"
            f": {type(exc).__name__}: {_one_line(exc)}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def main(argv: Sequence[str] | None = None) -> None:
    """Worker entry: ``SLOT CONN_FD RING_FD RING_BYTES RING_CAPACITY PARENT_PID PDEATHSIG``.

    The first message on the pipe is (store path, label pad); then bundles (module doc).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    slot, conn_fd, ring_fd, nbytes, capacity, parent, pdeathsig = (
        int(a) for a in (sys.argv[1:] if argv is None else argv))
    _die_with(parent, pdeathsig=bool(pdeathsig))
    conn = Connection(conn_fd)
    ring = RingView(ring_fd, nbytes, capacity)
    os.close(ring_fd)  # the mapping keeps the memory
    status = ring.status(slot)
    try:
        store_path, label_pad = conn.recv()
        reader = CropReader(open_store(store_path), label_pad)
    except EOFError:
        os._exit(0)
    except Exception as exc:  # noqa: BLE001  (a store that cannot open: one line, then exit)
        conn.send(("error", -1, f"loader worker (pid {os.getpid()}) could not open the "
                                f"store: {type(exc).__name__}: {_one_line(exc)}", IDLE,
                   type(exc).__name__, _one_line(exc)))
        os._exit(1)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe or died
            os._exit(0)
        bundle_id, items = message
        results = []
        try:
            for seq, offset, request in items:
                status[0] = seq  # what this worker holds, should it die now
                try:
                    results.append(reader.read(request, ring, offset))
                except Exception as exc:  # noqa: BLE001  (sent back as the worker's one line)
                    conn.send(("error", bundle_id, failure_line(request, exc), seq,
                               type(exc).__name__, _one_line(exc)))
                    results = None
                    break
            if results is not None:
                conn.send(("ok", bundle_id, results))
        except (BrokenPipeError, OSError):
            os._exit(0)
        finally:
            status[0] = IDLE


def _die_with(parent: int, *, pdeathsig: bool, interval: float = 0.25) -> None:
    """End this worker when its parent process ends (e.g. killed with -9).

    ``PR_SET_PDEATHSIG`` on Linux (when the parent started us from its main thread: the
    signal follows the thread that started the child); a watch thread otherwise. The same
    prctl call as pgps_data/raw/parallel.py's ``die_with_parent``, written here because that
    module imports dask and rich, which a loader worker should not pay for.
    """
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pdeathsig = False
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
    if pdeathsig and sys.platform.startswith("linux"):
        return

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="pgps-parent-watch", daemon=True).start()

