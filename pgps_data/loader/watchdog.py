"""Guarding torchdata's process workers: a dead worker becomes an error, not a hang.

torchdata 0.11 never checks worker liveness: a worker killed by SIGKILL or the OOM killer
leaves the loader waiting forever for its item (notes/torchdata_nodes.md). The watchdog
thread polls the ParallelMapper's worker processes; when one has died it records why and
stops the mapper, whose ``next()`` then ends, and the batcher raises
:class:`LoaderWorkerError` with that reason. It also terminates the workers on close.
"""

from __future__ import annotations

import re
import signal
import threading
from typing import Any


class LoaderWorkerError(RuntimeError):
    """A loader worker died or failed; the message (one line) says which and why."""


_WORKER_LINE = re.compile(r"loader worker \(pid \d+\) failed on case .*")


def worker_failure_line(exc: BaseException) -> str | None:
    """The one line a failing worker wrote (see ``CropReader._guarded``), or None.

    torchdata re-raises a worker's exception in the main process with the worker's whole
    traceback text as its message (once per thread it crossed); the worker's own line is
    the last line that names the loader worker.
    """
    lines = [m.group(0) for ln in str(exc).splitlines() if (m := _WORKER_LINE.search(ln))]
    return lines[-1].strip() if lines else None


class WorkerWatchdog:
    """Polls the worker processes of one ParallelMapper (torchdata 0.11 internals)."""

    def __init__(self, mapper: Any, interval: float = 0.25):
        self.mapper = mapper
        self.interval = interval
        self.failure: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pgps-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def workers(self) -> list[Any]:
        """The mapper's worker processes (empty before it started or with 0 workers)."""
        impl = getattr(self.mapper, "_it", None)  # _ParallelMapperImpl
        it = getattr(impl, "_it", None)  # _ParallelMapperIter
        return [w for w in getattr(it, "_workers", []) if hasattr(w, "exitcode")]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for w in self.workers():
                code = w.exitcode
                if code is not None and code != 0:
                    self.failure = _describe(w.pid, code)
                    self._halt_mapper()
                    return

    def _halt_mapper(self) -> None:
        it = getattr(getattr(self.mapper, "_it", None), "_it", None)
        for name in ("_stop", "_mp_stop"):
            event = getattr(it, name, None)
            if event is not None:
                event.set()

    def halt(self) -> None:
        """Stop watching and make the mapper's ``next()`` end (its workers still run)."""
        self._stop.set()
        self._halt_mapper()

    def stop_workers(self, timeout: float = 2.0) -> None:
        """Stop watching and end every worker (terminate, then kill)."""
        self.halt()
        workers = self.workers()
        for w in workers:
            if w.is_alive():
                w.terminate()
        for w in workers:
            w.join(timeout=timeout)
            if w.is_alive():
                w.kill()
                w.join(timeout=timeout)


def _describe(pid: int, code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = " (killed: out of memory? the OOM killer sends SIGKILL)" if -code == 9 else ""
        return f"a loader worker (pid {pid}) died from {name}{why}; the loader stopped"
    return f"a loader worker (pid {pid}) exited with status {code}; the loader stopped"
