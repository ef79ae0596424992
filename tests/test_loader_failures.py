"""Failure behaviour: errors surface within seconds, nothing hangs, no worker is orphaned."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from pgps_data import Curriculum, make_loader, open_store
from pgps_data.errors import PGPSInputError
from pgps_data.loader.watchdog import LoaderWorkerError
from tests.loader_store import build_store, live_loader_workers


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


def test_worker_exception_is_its_one_line(store_path, tmp_path) -> None:
    """A corrupt chunk read in a worker: the worker's line, raised in the main process."""
    path = tmp_path / "s.zarr"
    shutil.copytree(store_path, path)
    bad = open_store(path).case_ids[1]
    for shard in (path / "cases" / bad / "image" / "c").rglob("*"):
        if shard.is_file():  # flip a bit every ~1 kB of chunk payload (not the shard index)
            data = bytearray(shard.read_bytes())
            for i in range(64, len(data) - 4096, 997):
                data[i] ^= 0x10
            shard.write_bytes(bytes(data))
    loader = make_loader(open_store(path), _cur(), workers=2, seed=0)
    _alarm(30)
    t0 = time.monotonic()
    try:
        with pytest.raises(LoaderWorkerError) as info:
            for _ in loader:
                pass
    finally:
        signal.alarm(0)
    assert time.monotonic() - t0 < 10
    err = info.value
    message = str(err)
    # one line, the worker's own: not a traceback text re-raised through a thread
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith("loader worker (pid ")
    assert f"failed on case {bad!r}, step " in message and "patch [16, 32, 32]" in message
    assert ": PGPSInputError: " in message and "crc32c" in message
    assert err.error_type == "PGPSInputError" and "crc32c" in err.reason
    assert err.request is not None and err.request.case_id == bad
    assert not live_loader_workers()


def test_sigkilled_worker_names_itself_and_its_request(store_path) -> None:
    """Stopped first, so it surely holds requests, then killed: an error within 2 s."""
    loader = make_loader(open_store(store_path), _cur(10_000), workers=2, seed=0)
    it = iter(loader)
    next(it)
    victim = loader.worker_pids()[0]
    assert sorted(live_loader_workers()) == sorted(loader.worker_pids())  # the helper sees them
    os.kill(victim, signal.SIGSTOP)  # the loader soon waits for this worker's results
    killed_at: list[float] = []

    def kill() -> None:
        killed_at.append(time.monotonic())
        os.kill(victim, signal.SIGKILL)

    timer = threading.Timer(1.0, kill)
    timer.start()
    _alarm(30)
    try:
        with pytest.raises(LoaderWorkerError) as info:
            for _ in it:
                pass
    finally:
        signal.alarm(0)
        timer.cancel()
    assert time.monotonic() - killed_at[0] < 2.0
    message = str(info.value)
    assert f"a loader worker (worker 0, pid {victim}) died from SIGKILL" in message
    assert "OOM killer" in message and "\n" not in message
    req = info.value.request
    assert req is not None and info.value.worker == 0 and info.value.pid == victim
    assert (f"while it held case {req.case_id!r}, step {req.step}, patch [16, 32, 32]"
            in message)
    assert not live_loader_workers()


def test_idle_worker_killed_is_an_error_too(store_path) -> None:
    loader = make_loader(open_store(store_path), _cur(10_000), workers=2, seed=0)
    it = iter(loader)
    next(it)
    victim = loader.worker_pids()[1]
    os.kill(victim, signal.SIGKILL)
    _alarm(30)
    t0 = time.monotonic()
    try:
        with pytest.raises(LoaderWorkerError, match=rf"worker 1, pid {victim}\) died from SIGKILL"):
            for _ in it:
                pass
    finally:
        signal.alarm(0)
    assert time.monotonic() - t0 < 2.0
    assert not live_loader_workers()


def test_no_worker_outlives_a_sigkilled_main_process(store_path, tmp_path) -> None:
    # No ``if __name__ == "__main__"`` guard: workers never re-run the user's script.
    script = tmp_path / "main.py"
    script.write_text(textwrap.dedent(f"""
        import time
        from pgps_data import Curriculum, make_loader, open_store
        cur = Curriculum.from_steps(patch=(16, 32, 32), steps=(8, 16, 16), epochs=1,
                                    iterations_per_epoch=100000, batch=2, mode="constant")
        loader = make_loader(open_store({str(store_path)!r}), cur, workers=2, seed=0)
        it = iter(loader)
        next(it)
        print(" ".join(str(p) for p in loader.worker_pids()), flush=True)
        time.sleep(600)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        alive = pids
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [p for p in pids if _alive(p)]
        assert not alive, f"workers {alive} outlived their killed parent"
    finally:
        proc.kill()


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
