"""Our worker node: reader processes, the shared ring and their liveness, as one BaseNode.

    CropRequests → CropWorkers → StageBatcher → (PinMemory) → Prefetcher → Loader

:class:`CropWorkers` starts its processes from the thread that starts the loader, hands
each a bundle of requests together with the ring region its crops go to, and returns the
results in request order. Everything it does runs in the thread that calls
:meth:`CropWorkers.next` (torchdata's Prefetcher or PinMemory thread), which is also the
thread that copies crops out of the ring and releases their regions
(:meth:`CropWorkers.copy_out`): so a bundle is dispatched only when its regions fit in the
ring now (allocation never waits, it could only wait for itself), and the results due
first are always already dispatched.

How workers start: each is a fresh interpreter (``subprocess`` runs ``python -c`` with
:func:`pgps_data.loader.worker.main`), so nothing is forked from a process whose other
threads (torchdata's, torch's) may hold locks, and no hook or flag of the parent is
involved. Not multiprocessing's "spawn" or "forkserver": both re-run the parent's main
script in every worker (Python 3.11's forkserver does not preload it either), which for a
training script means importing torch per worker. Measured on 2 busy cores, until both
workers of a pool of 2 had imported the store module: spawn 6.4-7.7 s and forkserver
2.1-3.3 s under a main script that imports torch (0.8-1.4 s under one that does not),
fork 0.6 s, a fresh ``python -c`` as here 0.7 s. To the first batch: 1-2 s here, 0.5-0.9 s
with fork. Workers start once per stream, and validation reads its crops once per run
(pipeline.make_validation_loader), so few starts are paid.

Liveness is the node's own: while it waits for a result it waits on every worker's pipe
(a dead worker's pipe ends at once) and polls their exit status every ``WAIT`` s, so a
worker killed by SIGKILL or the OOM killer becomes :class:`LoaderWorkerError` naming the
worker and the request it held within a second, never a hang. A worker's exception comes
back as its one line, raised as the same error.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np
from torchdata.nodes import BaseNode

import pgps_data
from pgps_data.loader.ring import ALIGN, IDLE, SharedRing, request_layout
from pgps_data.loader.sampling import CropRequest
from pgps_data.loader.watchdog import LoaderWorkerError, died_line
from pgps_data.loader.worker import CropReader
from pgps_data.store.store import Store, open_store

BUNDLE_BYTES = 8 << 20  # requests travel to a worker together up to this many bytes of crops
BUNDLE_MAX = 64  # ... and up to this many requests (a round trip costs ~0.1 ms)
DEPTH = 2  # bundles a worker holds at once: it reads the next while we collect the last
WAIT = 0.25  # s between exit-status polls while waiting for a result
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
# The worker's first lines: Ctrl-C ignored before anything is imported (module doc of
# worker.py), and this very pgps_data first on the path, whatever the working folder holds.
_BOOT = ("import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); import sys; "
         "sys.path.insert(0, {root!r}); from pgps_data.loader.worker import main; main()")


@dataclass(frozen=True)
class Crops:
    """One request's crops, in the ring at ``offset`` until :meth:`CropWorkers.copy_out`."""

    request: CropRequest
    offset: int
    origins: list[tuple[int, int, int]]
    picked: list[int]
    fetched: tuple[int, int] = (0, 0)  # (requests, bytes) read from a remote store


def ring_bytes(step_bytes: int, workers: int) -> int:
    """Ring size: two steps (the one being collated and the next, whatever their split
    into requests), plus ``DEPTH`` bundles per worker in flight, plus alignment slack."""
    in_flight = max(step_bytes, max(workers, 1) * DEPTH * BUNDLE_BYTES)
    return 2 * step_bytes + in_flight + ALIGN * BUNDLE_MAX * (max(workers, 1) * DEPTH + 2)


class CropWorkers(BaseNode[Crops]):
    """Reads the requests of ``source`` in ``workers`` processes (0: in this thread).

    Its state is not a resume point: :meth:`PGPSLoader.state_dict` (the next step) is, and
    a loader resumes by starting a new graph at that step. ``get_state`` is therefore
    empty and ``reset`` accepts no state.
    """

    def __init__(self, source: BaseNode[CropRequest], store: Store, *, workers: int,
                 ring_bytes: int, label_pad: int = 0):
        super().__init__()
        self.source = source
        self.store_path = str(store.path)
        self.channels = store.channels
        self.label_pad = int(label_pad)
        self.failure: LoaderWorkerError | None = None  # what ended the stream, if a worker did
        self._count = int(workers)
        self._ring = SharedRing(ring_bytes, slots=self._count)
        self._lock = threading.RLock()
        self._closed = False
        self._procs: list[subprocess.Popen] = []
        self._conns: list[Connection] = []
        self._held: list[deque[list[tuple[int, int, CropRequest]]]] = []
        self._wake_r, self._wake_w = os.pipe()
        self._reader: CropReader | None = None
        self._pending: CropRequest | None = None
        self._exhausted = False
        self._seq = 0  # sequence number of the next request dispatched
        self._out = 0  # ... and of the next result returned
        self._done: dict[int, Crops] = {}

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the processes (from the calling thread: call it from the one that starts
        the loader; Linux's parent-death signal follows the thread that started a child)."""
        if self._count == 0:
            self._reader = CropReader(open_store(self.store_path), self.label_pad)
            return
        root = str(Path(pgps_data.__file__).resolve().parents[1])
        env = {**os.environ, **{k: "1" for k in _THREAD_VARS}}  # decode single-threaded
        main_thread = threading.current_thread() is threading.main_thread()
        try:
            for slot in range(self._count):
                mine, theirs = Pipe()
                args = [slot, theirs.fileno(), self._ring.fd, self._ring.nbytes,
                        self._ring.capacity, os.getpid(), int(main_thread)]
                try:
                    proc = subprocess.Popen(
                        [sys.executable, "-c", _BOOT.format(root=root), *map(str, args)],
                        pass_fds=(theirs.fileno(), self._ring.fd), env=env,
                        stdin=subprocess.DEVNULL)
                finally:
                    theirs.close()  # the child's copy alone keeps its end open: its death ends it
                self._procs.append(proc)
                self._conns.append(mine)
                self._held.append(deque())
                mine.send((self.store_path, self.label_pad))
        except BaseException:
            self.close()
            raise

    def worker_pids(self) -> list[int]:
        """Process ids of the workers (empty with none or once closed)."""
        return [] if self._closed else [p.pid for p in self._procs]

    def close(self) -> None:
        """Stop the workers and free the ring, once no thread can still copy out of it."""
        if self._closed:
            return
        self._closed = True
        try:
            os.write(self._wake_w, b"x")  # wakes a next() waiting for a worker
        except OSError:
            pass
        with self._lock:  # a next() or copy_out in progress has finished
            _stop(self._procs)
            for conn in self._conns:
                conn.close()
            self._ring.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    # -- BaseNode -----------------------------------------------------------------------
    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        if initial_state:
            raise ValueError("CropWorkers has no state to resume; PGPSLoader.state_dict does")
        if self._seq:
            raise RuntimeError("CropWorkers runs one stream once; start a new loader instead")
        super().reset(None)
        self.source.reset(None)

    def get_state(self) -> dict[str, Any]:
        return {}

    def next(self) -> Crops:
        with self._lock:
            if self._closed:
                raise StopIteration
            if self._count == 0:
                return self._read_here()
            while True:
                crops = self._done.pop(self._out, None)
                if crops is not None:
                    self._out += 1
                    self._dispatch()
                    return crops
                self._dispatch()
                if not any(self._held):
                    if self._exhausted and self._pending is None:
                        raise StopIteration
                    # Impossible with ring_bytes(); an error rather than a silent hang.
                    raise RuntimeError("the loader's ring cannot hold the next request")
                self._receive(WAIT)
                if self._closed:
                    raise StopIteration

    def copy_out(self, crops: Crops, image: np.ndarray, label: np.ndarray,
                 rows: tuple[int, ...] | None = None) -> None:
        """Copy ``crops`` into batch arrays ``image`` (B, C, ...) and ``label`` (B, 1, ...)
        at ``rows`` (default: the request's slots), then release its ring region (in
        request order)."""
        with self._lock:
            if self._closed:
                raise StopIteration  # the loader closed meanwhile: no ring left to read
            req = crops.request
            rows = req.slots if rows is None else tuple(rows)
            n, shape = len(req.slots), req.read_shape
            img_bytes, _ = request_layout(n, self.channels, shape)
            src_img = self._ring.view(crops.offset, np.dtype(np.float32),
                                      (n, self.channels, *shape))
            src_lab = self._ring.view(crops.offset + img_bytes, np.dtype(np.uint8), (n, *shape))
            first = rows[0]
            if rows == tuple(range(first, first + n)):  # contiguous: one block copy
                image[first:first + n] = src_img
                label[first:first + n, 0] = src_lab
            else:
                image[list(rows)] = src_img
                label[list(rows), 0] = src_lab
            del src_img, src_lab  # no view may outlive the lock (close unmaps)
            self._ring.release(crops.offset)

    # -- inside next() ------------------------------------------------------------------
    def _peek(self) -> CropRequest | None:
        if self._pending is None and not self._exhausted:
            try:
                self._pending = self.source.next()
            except StopIteration:
                self._exhausted = True
        return self._pending

    def _nbytes(self, request: CropRequest) -> int:
        img, lab = request_layout(len(request.slots), self.channels, request.read_shape)
        return img + lab

    def _read_here(self) -> Crops:
        request = self._peek()
        if request is None:
            raise StopIteration
        offset = self._ring.allocate(self._nbytes(request))
        if offset is None:
            raise RuntimeError("the loader's ring cannot hold the next request")
        self._pending = None
        origins, picked, fetched = self._reader.read(request, self._ring, offset)  # type: ignore[union-attr]
        self._seq += 1
        self._out += 1
        return Crops(request, offset, origins, picked, fetched)

    def _dispatch(self) -> None:
        """Hand bundles to workers holding fewer than ``DEPTH``, while the ring has room."""
        while True:
            worker = min(range(self._count), key=lambda w: len(self._held[w]))
            if len(self._held[worker]) >= DEPTH:
                return
            bundle = self._bundle()
            if not bundle:
                return
            self._held[worker].append(bundle)
            try:
                self._conns[worker].send((bundle[0][0], bundle))
            except OSError:  # it died: the next wait finds out how and names what it held
                return

    def _bundle(self) -> list[tuple[int, int, CropRequest]]:
        """The next requests, up to ``BUNDLE_BYTES`` / ``BUNDLE_MAX``, each with its region."""
        items: list[tuple[int, int, CropRequest]] = []
        size = 0
        while len(items) < BUNDLE_MAX:
            request = self._peek()
            if request is None:
                break
            nbytes = self._nbytes(request)
            if items and size + nbytes > BUNDLE_BYTES:
                break
            offset = self._ring.allocate(nbytes)
            if offset is None:  # the ring is full: dispatch the rest once results are out
                break
            self._pending = None
            items.append((self._seq, offset, request))
            self._seq += 1
            size += nbytes
        return items

    def _receive(self, timeout: float) -> None:
        """Take in what the workers sent within ``timeout``; a dead worker raises."""
        ready = wait([*self._conns, self._wake_r], timeout)
        for w, conn in enumerate(self._conns):
            if conn in ready:
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    self._fail(self._died(w))
                self._take(w, message)
        if not ready:  # a pipe that did not end (a fork elsewhere may hold its other end)
            for w, proc in enumerate(self._procs):
                if proc.poll() is not None:
                    self._fail(self._died(w))

    def _take(self, w: int, message: tuple) -> None:
        kind, bundle_id, payload = message[:3]
        if kind == "error":
            held = self._held[w][0] if self._held[w] else []
            request = next((r for s, _, r in held if s == message[3]), None) if held else None
            self._fail(LoaderWorkerError(payload, worker=w, pid=self._procs[w].pid,
                                         request=request, error_type=message[4],
                                         reason=message[5]))
        bundle = self._held[w].popleft()
        assert bundle[0][0] == bundle_id, "a worker answered out of order"
        for (seq, offset, request), (origins, picked, fetched) in zip(bundle, payload):
            self._done[seq] = Crops(request, offset, origins, picked, fetched)

    def _died(self, w: int) -> LoaderWorkerError:
        proc = self._procs[w]
        try:
            code = proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            code = None
        seq = int(self._ring.status[w])
        held = [item for bundle in self._held[w] for item in bundle]
        request = next((r for s, _, r in held if s == seq), None) if seq != IDLE else None
        if request is None and held:
            request = held[0][2]
        return LoaderWorkerError(died_line(w, proc.pid, code, request), worker=w,
                                 pid=proc.pid, request=request)

    def _fail(self, error: LoaderWorkerError) -> None:
        self.failure = error
        raise error


def _stop(procs: list[subprocess.Popen], timeout: float = 1.0) -> None:
    """End the workers now: SIGTERM (a worker keeps nothing worth finishing: its crops
    would only be dropped), then SIGKILL for any still there after ``timeout`` s."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
