"""Failure behaviour: errors surface within seconds, nothing hangs, no worker is orphaned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from pgps_data import Curriculum, make_loader, open_store
from pgps_data.errors import PGPSInputError
from pgps_data.loader.watchdog import LoaderWorkerError
from pgps_data.store.store import Case
from tests.loader_store import build_store


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("failures"), cases=3)


def _cur(iterations: int = 200) -> Curriculum:
    return Curriculum.from_steps(patch=(16, 32, 32), steps=(8, 16, 16), epochs=1,
                                 iterations_per_epoch=iterations, batch=2, mode="constant")


def _alarm(seconds: int):
    def boom(*_):
        raise TimeoutError(f"the loader hung for {seconds} s")
    signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)


def test_worker_exception_names_the_case_and_crop(store_path, monkeypatch) -> None:
    store = open_store(store_path)
    bad = store.case_ids[1]
    original = Case.read_many

    def read_many(self, origins, shape, **kw):
        if self.id == bad:
            raise OSError("disk on fire")
        return original(self, origins, shape, **kw)

    monkeypatch.setattr(Case, "read_many", read_many)  # forked workers inherit the patch
    loader = make_loader(store, _cur(), workers=2, seed=0)
    _alarm(20)
    t0 = time.monotonic()
    try:
        with pytest.raises(LoaderWorkerError) as info:
            for _ in loader:
                pass
    finally:
        signal.alarm(0)
    assert time.monotonic() - t0 < 10
    message = str(info.value)
    assert bad in message and "disk on fire" in message and "patch [16, 32, 32]" in message
    # one line, the worker's own: not torchdata's re-raised traceback text
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith("loader worker (pid ")
    assert not _live_workers()


def test_sigkilled_worker_becomes_an_error_not_a_hang(store_path) -> None:
    loader = make_loader(open_store(store_path), _cur(10_000), workers=2, seed=0)
    it = iter(loader)
    next(it)
    victim = loader._watchdog.workers()[0]
    os.kill(victim.pid, signal.SIGKILL)
    _alarm(30)
    t0 = time.monotonic()
    try:
        with pytest.raises(LoaderWorkerError, match="SIGKILL"):
            for _ in it:
                pass
    finally:
        signal.alarm(0)
    assert time.monotonic() - t0 < 10
    assert not _live_workers()


def test_no_worker_outlives_a_sigkilled_main_process(store_path, tmp_path) -> None:
    script = tmp_path / "main.py"
    script.write_text(textwrap.dedent(f"""
        import time
        from pgps_data import Curriculum, make_loader, open_store
        cur = Curriculum.from_steps(patch=(16, 32, 32), steps=(8, 16, 16), epochs=1,
                                    iterations_per_epoch=100000, batch=2, mode="constant")
        loader = make_loader(open_store({str(store_path)!r}), cur, workers=2, seed=0)
        it = iter(loader)
        next(it)
        print(" ".join(str(w.pid) for w in loader._watchdog.workers()), flush=True)
        time.sleep(600)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        alive = pids
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [p for p in pids if _alive(p)]
        assert not alive, f"workers {alive} outlived their killed parent"
    finally:
        proc.kill()


def _live_workers() -> list[psutil.Process]:
    """Children of this process that are loader workers (not multiprocessing's tracker)."""
    out = []
    for child in psutil.Process().children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and not any(
                "resource_tracker" in part for part in child.cmdline()
            ):
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_missing_or_foreign_store_is_one_clear_line(tmp_path) -> None:
    with pytest.raises(PGPSInputError) as info:
        open_store(tmp_path / "nope.zarr")
    assert "nope.zarr" in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "junk.zarr").mkdir()
    (tmp_path / "junk.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(PGPSInputError, match="junk.zarr"):
        open_store(tmp_path / "junk.zarr")
