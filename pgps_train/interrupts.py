"""What ends a run early: a signal (Ctrl-C, a scheduler's SIGTERM) or a failed loader.

**Signals.** :class:`StopSignals` turns the first SIGINT or SIGTERM during the loop into a
request that the loop honours at the end of its current step: it writes the checkpoint,
closes the loaders and raises :class:`Interrupted` (exit status 128 + signal: 130, 143).
A second signal, or one outside the loop (setup, final evaluation), stops at once: the
checkpoint on disk is whatever was written last, never half a file (writes are atomic).
Loader workers are fresh interpreters (pgps_data/loader/workers.py) that ignore SIGINT
themselves (a terminal's Ctrl-C reaches the whole process group, and the main process
decides) and die on SIGTERM, so the loader's ``close()`` ends them at once.

**Loader failures.** A worker that dies arrives as :class:`LoaderWorkerError`; an exception
inside a worker (a corrupt chunk raising PGPSInputError) names the worker, the case and
the reason in one line, carried as LoaderWorkerError. :func:`loader_batches` turns these into
one line: :class:`WorkerDataError` (a PGPSInputError: the store is at fault, exit 2) or
LoaderWorkerError (the worker is, exit 1).
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from pgps_data.errors import PGPSInputError
from pgps_data.loader.watchdog import LoaderWorkerError, worker_failure_line

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal. ``step``: steps done; ``checkpoint``: one was written."""

    def __init__(self, signum: int, step: int | None = None, checkpoint: bool = False):
        self.signum, self.step, self.checkpoint = int(signum), step, checkpoint
        name = signal.Signals(signum).name
        if checkpoint:
            text = f"interrupted at step {step} ({name}); checkpoint written"
        else:
            text = f"interrupted ({name}, a second signal or outside the training loop); " \
                   "stopped at once without a new checkpoint"
        super().__init__(text)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Context manager: SIGINT/SIGTERM set :attr:`signum` while :attr:`graceful` is True.

    Installs handlers only in the main thread (elsewhere Python refuses; the run then
    simply has no graceful stop) and restores the previous ones on exit.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.graceful = False
        self._pid = os.getpid()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _handle(self, signum: int, frame: object) -> None:
        if os.getpid() != self._pid:  # a loader worker that inherited this handler
            if signum == signal.SIGTERM:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
            return
        if self.signum is not None or not self.graceful:
            raise Interrupted(signum)
        self.signum = signum

    def wait_for_signal(self, seconds: float) -> bool:
        """Whether a stop was requested within ``seconds`` (a scheduler's SIGTERM reaches
        the workers and us at once; a worker found dead may be the first sign of ours)."""
        deadline = time.monotonic() + seconds
        while self.signum is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.signum is not None


class WorkerDataError(PGPSInputError):
    """A loader worker could not read the store (corrupt chunk, missing array)."""


_INPUT_ERROR = re.compile(r": (?:[\w.]+\.)?PGPSInputError: (.*)$")


def loader_failure(exc: BaseException) -> Exception | None:
    """The one-line error for what a loader's ``next()`` raised; None if not a loader's.

    The worker's own line ("loader worker (pid N) failed on case ...: Type: reason") is
    found in the message whether the loader passed it on as LoaderWorkerError or as
    torchdata's RuntimeError holding the tracebacks; a PGPSInputError reason (the store
    is corrupt or incomplete) becomes a WorkerDataError with that reason alone.
    """
    line = worker_failure_line(exc)
    if line is None:
        if isinstance(exc, LoaderWorkerError):  # a dead worker (the watchdog's line)
            return LoaderWorkerError(" ".join(str(exc).split()))
        return None
    data = _INPUT_ERROR.search(line)
    if data:  # the store is at fault: say what the reader said (it names case and chunk)
        return WorkerDataError(data.group(1))
    return LoaderWorkerError(line)


def loader_batches(loader: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Iterate ``loader``, turning a worker's failure into one-line errors (see module)."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as exc:
            one_line = loader_failure(exc)
            if one_line is None:
                raise
            raise one_line from None
        yield batch
