"""The conversion's worker pool: progress on stderr, Ctrl-C left to the parent."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time

import pytest

from pgps_data.raw.parallel import run_per_case, worker_pool

ITEMS = [([("case", k)],) for k in range(4)]  # dict(*item) == {"case": k}: a picklable builtin


def test_progress_bars_draw_on_stderr(capsys: pytest.CaptureFixture) -> None:
    results = run_per_case(dict, ITEMS, workers=1, scheduler=None, description="probing")
    assert results == [{"case": k} for k in range(4)]
    out, err = capsys.readouterr()
    assert out == ""  # stdout is for results (and may be a closed pipe)
    assert "probing" in err and "4/4" in err


def test_workers_start_with_the_pool_and_ignore_ctrl_c(capfd: pytest.CaptureFixture) -> None:
    """The terminal sends SIGINT to every process of the group: a worker must not die of it
    (nor print a traceback) while it is still importing; the parent decides."""
    before = set(mp.active_children())
    with worker_pool(2) as pool:
        workers = set(mp.active_children()) - before
        assert len(workers) == 2, "the workers start with the pool"
        for worker in workers:  # at once: they are still starting up
            os.kill(worker.pid, signal.SIGINT)
        time.sleep(0.3)
        results = run_per_case(dict, ITEMS, workers=2, scheduler=None, description="after",
                               quiet=True, pool=pool)
        assert results == [{"case": k} for k in range(4)]
        assert all(w.is_alive() for w in workers)
    assert not any(w.is_alive() for w in workers)  # the pool's exit joined them
    assert "KeyboardInterrupt" not in capfd.readouterr().err  # no traceback from a worker


def test_ctrl_c_in_the_parent_propagates_out_of_run_per_case() -> None:
    before = set(mp.active_children())
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        with worker_pool(2) as pool:
            timer.start()
            run_per_case(time.sleep, [(0.5,)] * 40, workers=2, scheduler=None,
                         description="sleeping", quiet=True, pool=pool)
    timer.cancel()
    assert not set(mp.active_children()) - before  # no worker left behind
