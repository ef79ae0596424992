"""Run one task per case with dask, with a progress bar, locally or on a cluster.

Locally dask's multiprocessing scheduler runs the tasks in spawned worker processes that
die with the parent (so a killed conversion never leaves a writer behind that could race a
rerun); one worker runs them in this process; a ``dask.distributed`` address sends them
to a cluster whose workers see the same file system. Progress bars draw on stderr.

Stopping: the workers ignore Ctrl-C (the terminal sends SIGINT to the whole process group;
a worker interrupted while importing or mid-case would print a traceback of its own, and
one interrupted inside a task would carry on with the next case). The parent alone turns
the signal into an exception, which leaves :func:`run_per_case` and the pool's ``with``
block; whoever holds the pool stops the workers (``interrupts.workers_stopped_on_interrupt``).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import dask
from dask.callbacks import Callback
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pgps_data.console import progress_console
from pgps_data.errors import PGPSInputError
from pgps_data.interrupts import raise_if_interrupted


@contextlib.contextmanager
def worker_pool(workers: int, scheduler: str | None = None) -> Iterator[Executor | None]:
    """One pool of spawned, single-threaded workers for every pass of a conversion.

    Spawning and importing costs a few seconds per worker, so the statistics pass and the
    conversion pass share the pool. None when running in-process or on a cluster.
    """
    if scheduler or workers <= 1:
        yield None
        return
    with _single_threaded_children(), ProcessPoolExecutor(
        max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init
    ) as pool:
        _start_workers(pool, workers)
        yield pool


def run_per_case(
    fn: Callable[..., dict[str, Any]],
    items: Sequence[tuple],
    *,
    workers: int,
    scheduler: str | None,
    description: str,
    quiet: bool = False,
    pool: Executor | None = None,
) -> list[dict[str, Any]]:
    """``[fn(*item) for item in items]`` in parallel, one dask task per item, in order."""
    if not items:
        return []
    if pool is None and not scheduler and workers > 1:
        with worker_pool(workers) as own:
            return run_per_case(fn, items, workers=workers, scheduler=None,
                                description=description, quiet=quiet, pool=own)
    with _progress(quiet) as progress:
        bar = progress.add_task(description, total=len(items))
        if scheduler:
            return _run_distributed(fn, items, scheduler, progress, bar)
        if pool is None:  # one worker: run in this process
            results = []
            for item in items:
                raise_if_interrupted()
                results.append(fn(*item))
                progress.advance(bar)
            return results
        tasks = [dask.delayed(fn, pure=False)(*item) for item in items]
        try:
            with _Advance(lambda: progress.advance(bar)):
                return list(
                    dask.compute(*tasks, scheduler="processes", num_workers=workers,
                                 pool=pool, chunksize=1)
                )
        except BrokenProcessPool:
            from pgps_data.store.write import RESUME  # not at the top: workers import this module

            raise PGPSInputError(
                f"{description}: a worker process died abruptly (out of memory?); {RESUME}, "
                "with fewer --workers"
            ) from None


@contextlib.contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Spawned workers start with one BLAS/OpenMP thread each (one task per core)."""
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def _start_workers(pool: ProcessPoolExecutor, workers: int) -> None:
    """Start every worker now, with SIGINT ignored from their first instruction on.

    The pool starts one process per ``submit`` while none is idle, and an ignored signal
    stays ignored across ``exec``, so Python in the child never installs its Ctrl-C
    handler (the initializer runs only after seconds of imports).
    """
    with _sigint_ignored():
        for _ in range(workers):
            pool.submit(os.getpid)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored in this process for the block (main thread only; else a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker_init() -> None:
    """Each worker: dies with its parent, leaves Ctrl-C to the parent (module doc)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies (no orphan writers)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


class _Advance(Callback):
    """dask callback: advance the bar once per finished case task."""

    def __init__(self, advance: Callable[[], None]):
        super().__init__()
        self._advance_bar = advance

    def _posttask(self, key, result, dsk, state, worker_id):  # noqa: ANN001
        self._advance_bar()
        raise_if_interrupted()


CONNECT_TIMEOUT_S = 30  # reaching the dask scheduler


def _run_distributed(fn, items, address, progress, bar) -> list[dict[str, Any]]:  # noqa: ANN001
    """One task per case on the cluster at ``address``, results in order.

    A worker that dies mid-case (killed, out of memory, a lost node) costs only its task:
    the scheduler runs it again on another worker (``distributed.scheduler.allowed-failures``
    times), and the rerun rewrites the case, whose half-written folder is not marked
    complete (:mod:`pgps_data.store.write`; one writer per case folder). A case whose
    workers died every time comes back as that case's error line and the store stays
    resumable. The store's lock is held here, by the client, for the whole conversion.
    """
    from distributed import Client, as_completed

    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise PGPSInputError(f"{address}: cannot reach the dask scheduler ({exc}); start it, or "
                             "drop --scheduler to convert on this machine") from None
    with client:
        futures = [client.submit(fn, *item, pure=False) for item in items]
        for _ in as_completed(futures):
            progress.advance(bar)
            raise_if_interrupted()
        _settled(futures)
        return [_result(future, item) for future, item in zip(futures, items, strict=True)]


def _settled(futures: list) -> None:
    """Wait until no task of ours runs anywhere on the cluster.

    A finished task whose result was lost with its worker goes back to pending and is run
    again elsewhere, after ``as_completed`` has already yielded it; returning then would
    leave that task writing its case into the store after the conversion said it ended
    (and a rerun would race it). Ctrl-C still stops the wait.
    """
    from distributed import wait

    while not all(future.done() for future in futures):
        with contextlib.suppress(TimeoutError):
            wait(futures, timeout=1)
        raise_if_interrupted()


def _result(future, item: tuple) -> dict[str, Any]:  # noqa: ANN001
    """A finished task's result, or one error line for a task the cluster gave up on."""
    if future.status == "finished":
        return future.result()
    from pgps_data.store.write import RESUME  # not at the top: workers import this module

    case = next((getattr(x, "case_id", None) for x in item if hasattr(x, "case_id")), None)
    exc = future.exception() if future.status == "error" else None
    why = (f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}" if exc is not None
           else future.status)
    return {"case_id": case, "error": f"case {case}: its task failed on the cluster ({why}); "
            f"{RESUME}"}


def _progress(quiet: bool) -> Progress:
    """One bar per pass, on stderr (stdout carries the results and may be a closed pipe)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=progress_console(),
        disable=quiet,
        transient=False,
    )
