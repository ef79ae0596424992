"""Stopping a conversion (or a prediction) on Ctrl-C or SIGTERM: one line, workers gone, outputs kept.

A conversion is crash-safe (a case is listed only once complete, the root is written
atomically, the store's lock dies with its holder), so stopping it needs no cleanup of the
store, only a prompt and quiet exit:

- :func:`interrupts_as_exit` turns SIGINT and SIGTERM into :class:`Interrupted` in the
  main thread (exit status 130 / 143, the shell's convention), so ``with`` blocks run:
  the lock is released, the worker pool closed. A second signal exits at once.
- :func:`workers_stopped_on_interrupt` wraps the worker pool: on such an interrupt the
  cases not started are cancelled, each worker gets a few seconds to finish the case it
  is writing, and what is left is killed (leaving the pool would otherwise wait for every
  case in flight: minutes on real data).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from typing import TypeVar

__all__ = ["Interrupted", "interrupts_as_exit", "raise_if_interrupted",
           "workers_stopped_on_interrupt"]

T = TypeVar("T")
GRACE_S = 5.0  # seconds a worker gets to finish the case it is writing
_pending: list[int] = []  # the exit status of a signal taken but not yet raised


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (``code`` 130) or SIGTERM (143), raised where the main thread was."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


@contextlib.contextmanager
def interrupts_as_exit(prog: str, message: str) -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` inside the block (main thread only).

    A second signal while the first unwinds prints ``prog: message`` and exits at once
    with the same status (the store is crash-safe either way). The previous handlers are
    restored on the way out.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum: int, frame) -> None:  # noqa: ANN001
        code = 128 + signum
        if fired:
            os.write(2, f"{prog}: {message}\n".encode())
            os._exit(fired[0])
        fired.append(code)
        _pending[:] = [code]
        if not _in_finalizer(frame):
            raise Interrupted(code)
        # Python swallows (and prints) an exception raised inside a __del__ (the garbage
        # collector ran one of a library's): the next raise_if_interrupted() raises it.

    saved = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    _pending.clear()
    try:
        yield
        raise_if_interrupted()  # a signal taken in a finalizer, with no check point after it
    except KeyboardInterrupt as exc:  # raised by a library before our handler was reached
        if isinstance(exc, Interrupted):
            raise
        raise Interrupted(128 + signal.SIGINT) from None
    finally:
        _pending.clear()
        for sig, old in saved.items():
            signal.signal(sig, old)


def raise_if_interrupted() -> None:
    """Raise the :class:`Interrupted` of a signal whose handler could not raise it.

    Long loops call this between items (cases): a signal that arrived while the garbage
    collector ran a ``__del__`` is then honoured at the next item, not after the last.
    """
    if _pending and threading.current_thread() is threading.main_thread():
        raise Interrupted(_pending.pop())


def _in_finalizer(frame) -> bool:  # noqa: ANN001
    """Whether ``frame`` runs inside a ``__del__`` (where a raised exception is lost)."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def workers_stopped_on_interrupt(
    pool: contextlib.AbstractContextManager[T], grace_s: float = GRACE_S
) -> Iterator[T]:
    """Enter the worker ``pool`` context; on Ctrl-C or SIGTERM stop the processes it
    started before leaving it (leaving it would wait for every case in flight).

    Each worker may finish the case it is writing within ``grace_s`` (pending cases are
    cancelled), then whatever is left is killed. Stopping a worker mid-case is safe (a
    case is listed only once complete; a rerun rewrites it), but it is the last resort:
    a killed worker leaves its semaphores to multiprocessing's resource tracker, which
    then prints a warning. Child processes that existed before are left alone.
    """
    before = set(mp.active_children())
    with pool as entered:
        try:
            yield entered
        except (KeyboardInterrupt, SystemExit):
            started = set(mp.active_children()) - before
            if isinstance(entered, Executor):
                entered.shutdown(wait=False, cancel_futures=True)
            deadline = time.monotonic() + grace_s
            for child in started:
                child.join(max(0.0, deadline - time.monotonic()))
            for child in started:
                if child.is_alive():
                    child.kill()
            raise
