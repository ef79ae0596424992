"""What a dead or failing loader worker becomes: one :class:`LoaderWorkerError` line.

The liveness check itself is :class:`~pgps_data.loader.workers.CropWorkers`'s (it waits on
its workers' pipes and exit status); this module says what the user reads: which worker
(index, pid), how it ended (the signal, with the OOM killer's hint for SIGKILL, or its exit
status), and the request it held (case, step, patch). A worker's own exception arrives as
the worker's one line ("loader worker (pid N) failed on case 'x', step s, patch [..],
slots [..]: Type: reason").
"""

from __future__ import annotations

import re
import signal
from typing import Any


class LoaderWorkerError(RuntimeError):
    """A loader worker died or failed; the message (one line) says which and why.

    ``worker`` (index) and ``pid`` name the worker, ``request`` the CropRequest it held
    (None if idle or unknown); for a worker's exception, ``error_type`` is the exception's
    type name in the worker (e.g. "PGPSInputError": the store is at fault) and ``reason``
    its message.
    """

    def __init__(self, message: str, *, worker: int | None = None, pid: int | None = None,
                 request: Any = None, error_type: str | None = None,
                 reason: str | None = None):
        super().__init__(message)
        self.worker, self.pid, self.request = worker, pid, request
        self.error_type, self.reason = error_type, reason


def died_line(worker: int, pid: int, code: int | None, request: Any) -> str:
    """The line for a worker that ended without being told to (``code``: its exit status,
    negative for a signal, None if it closed its pipe but did not exit)."""
    who = f"a loader worker (worker {worker}, pid {pid})"
    if code is None:
        how = "stopped answering"
    elif code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        oom = " (killed: out of memory? the OOM killer sends SIGKILL)" if -code == 9 else ""
        how = f"died from {name}{oom}"
    else:
        how = f"exited with status {code}"
    if request is None:
        held = "while it held no request"
    else:
        held = (f"while it held case {request.case_id!r}, step {request.step}, "
                f"patch {list(request.patch)}")
    return f"{who} {how} {held}; the loader stopped"


_WORKER_LINE = re.compile(r"loader worker \(pid \d+\) failed on case .*")


def worker_failure_line(exc: BaseException) -> str | None:
    """The worker's own line ("loader worker (pid N) failed on case ...") in ``exc``'s
    message, or None: what pgps_train/interrupts.py reads to tell a store at fault
    (PGPSInputError) from a worker at fault. The loader raises that line as the whole
    message of a LoaderWorkerError; the search also finds it inside a longer text.
    """
    lines = [m.group(0) for ln in str(exc).splitlines() if (m := _WORKER_LINE.search(ln))]
    return lines[-1].strip() if lines else None
