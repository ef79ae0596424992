"""kill -9 in the middle of a conversion, then rerun: complete cases are kept, the rest
finished, and the result equals a clean conversion. Killing only the main process must take
its worker processes with it (they would otherwise keep writing into the store).

Stopping a conversion otherwise (issue 7): Ctrl-C and SIGTERM end it with one line, its
workers gone and its lock released; a full disk is one line naming the store; a closed
stdout (``| head``) does not end it. Each time a rerun finishes the store."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from pgps_data.cli.convert import main as convert_main
from pgps_data.raw.convert import convert
from pgps_data.store import write as store_write
from pgps_data.store.lock import LOCK_NAME
from pgps_data.store.store import open_store
from pgps_data.synthetic.dataset import write_synthetic_dataset
from tests.conftest import assert_same_store

N_CASES = 8
ROOT = Path(__file__).resolve().parents[1]
INTERRUPTED = "pgps-convert: interrupted; rerun the same command to continue (complete cases are kept)"


@pytest.fixture(scope="module")
def crash_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A dataset that takes a few seconds to convert, and its clean (uninterrupted) store."""
    base = tmp_path_factory.mktemp("crash")
    raw = write_synthetic_dataset(base / "Task05_Crash", cases=N_CASES, test_cases=0,
                                  size=(32, 80, 80), seed=4)
    clean = base / "clean.zarr"
    summary = convert(raw, clean, workers=1, quiet=True, log=lambda _: None)
    assert summary["converted"] == N_CASES and not summary["errors"]
    return raw, clean


def _complete_on_disk(out: Path) -> list[str]:
    done = []
    for meta in (out / "cases").glob("*/zarr.json"):
        try:
            if json.loads(meta.read_text()).get("attributes", {}).get("complete") is True:
                done.append(meta.parent.name)
        except (OSError, ValueError):
            pass
    return done


def _start(raw: Path, out: Path) -> subprocess.Popen:
    """The CLI in its own session; output to a file (a surviving worker must not block us)."""
    with open(out.with_suffix(".log"), "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "pgps_data.cli.convert", str(raw), str(out),
             "--workers", "2", "--quiet"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_midway(proc: subprocess.Popen, out: Path, *, group: bool) -> list[int]:
    """Wait for one case (not all) to be complete, SIGKILL; returns the worker pids seen."""
    workers: set[int] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            workers |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
        done = len(_complete_on_disk(out)) if (out / "cases").is_dir() else 0
        if done >= 1:
            break
        assert proc.poll() is None, out.with_suffix(".log").read_text()
        time.sleep(0.01)
    assert len(_complete_on_disk(out)) < N_CASES, "finished before the kill: make it bigger"
    if group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    return sorted(workers)


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _rerun_and_check(raw: Path, out: Path, clean: Path) -> None:
    killed = open_store(out)
    done = _complete_on_disk(out)
    assert killed.case_ids == sorted(done)  # only complete cases are listed
    assert 1 <= len(done) < N_CASES
    for case in killed:  # what is listed is whole
        assert case.meta["complete"] is True
        assert case.label.shape == case.shape
    proc = subprocess.run(
        [sys.executable, "-m", "pgps_data.cli.convert", str(raw), str(out), "--workers", "2",
         "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"Skipping {len(done)} complete case(s)" in proc.stdout
    assert f"{N_CASES - len(done)} case(s) converted, {len(done)} already complete" in proc.stdout
    store = open_store(out)
    assert store.case_ids == [f"synth_{n:03d}" for n in range(N_CASES)]
    assert store.meta["complete"] is True
    for case in store:
        label = case.label[...]
        assert case.meta["complete"] is True and case.image.shape[1:] == label.shape
        assert np.isfinite(case.image[...]).all()
        for v in store.label_values:
            idx = case.foreground(v)
            assert (label[tuple(idx.T)] == v).all()
            assert case.meta["label_counts"][str(v)] == int((label == v).sum())
    assert_same_store(clean, out)
    assert store.meta["foreground_fraction"] == open_store(clean).meta["foreground_fraction"]


def test_kill_the_process_group_then_rerun(crash_data: tuple[Path, Path], tmp_path: Path) -> None:
    raw, clean = crash_data
    out = tmp_path / "killed.zarr"
    workers = _kill_midway(_start(raw, out), out, group=True)
    time.sleep(0.5)
    assert not _alive(workers)
    _rerun_and_check(raw, out, clean)


def test_kill_only_the_main_process_takes_the_workers_along(
        crash_data: tuple[Path, Path], tmp_path: Path) -> None:
    raw, clean = crash_data
    out = tmp_path / "killed_main.zarr"
    workers = _kill_midway(_start(raw, out), out, group=False)
    assert len(workers) >= 2, "saw no worker processes"
    deadline = time.monotonic() + 5
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = _alive(workers)
    for pid in survivors:  # never leave them behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"processes outlived the killed main process: {survivors}"
    before = {str(p): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    time.sleep(1.0)  # nothing keeps writing into the store
    after = {str(p): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert before == after
    _rerun_and_check(raw, out, clean)


def test_a_killed_worker_gives_one_line_and_a_rerun_finishes(
        crash_data: tuple[Path, Path], tmp_path: Path) -> None:
    """A worker killed from outside (say by the OOM killer): one line, exit 2, rerun works."""
    raw, clean = crash_data
    out = tmp_path / "killed_worker.zarr"
    proc = _start(raw, out)
    deadline = time.monotonic() + 120
    victim = None
    while victim is None and time.monotonic() < deadline:
        assert proc.poll() is None, out.with_suffix(".log").read_text()
        if (out / "cases").is_dir() and _complete_on_disk(out):
            kids = psutil.Process(proc.pid).children()
            victim = next((k for k in kids if "resource_tracker" not in " ".join(k.cmdline())),
                          None)
        time.sleep(0.01)
    assert victim is not None
    victim.kill()
    assert proc.wait(timeout=60) == 2
    log = out.with_suffix(".log").read_text()
    assert "Traceback" not in log
    assert "worker process died" in log and "rerun" in log
    _rerun_and_check(raw, out, clean)


# ------------------------------------------------------------------ stops other than kill -9


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    rc = convert_main([*argv, "--workers", "1", "--quiet"])
    got = capsys.readouterr()
    assert "Traceback" not in got.err + got.out
    return rc, got.out, got.err


def test_a_closed_stdout_does_not_end_the_job(tiny_raw: Path, tiny_store: Path,
                                              tmp_path: Path) -> None:
    raw, clean = tiny_raw, tiny_store
    out = tmp_path / "piped.zarr"
    cmd = (f"set -o pipefail; {sys.executable} -m pgps_data.cli.convert {raw} {out} "
           "--workers 1 | head -c 1 >/dev/null")
    proc = subprocess.run(["bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert open_store(out).meta["complete"] is True
    assert_same_store(clean, out)


@pytest.mark.parametrize(("sig", "code", "group", "workers"), [
    (signal.SIGINT, 130, True, 2),  # Ctrl-C: the terminal signals the whole process group
    (signal.SIGTERM, 143, False, 2),  # kill PID
    (signal.SIGINT, 130, False, 1),  # in-process: the signal lands inside a zarr write
])
def test_a_signal_stops_with_one_line_and_a_rerun_finishes(
        crash_data: tuple[Path, Path], tmp_path: Path, sig: int, code: int, group: bool,
        workers: int) -> None:
    """One line, the signal's exit status, no worker left, the lock released, resumable."""
    raw, clean = crash_data
    out = tmp_path / "stopped.zarr"
    with open(out.with_suffix(".log"), "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgps_data.cli.convert", str(raw), str(out),
             "--workers", str(workers), "--quiet"], cwd=ROOT, stdout=log, stderr=subprocess.PIPE,
            text=True, start_new_session=True)
    children: set[int] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
            (out / "cases").is_dir() and _complete_on_disk(out)):
        assert proc.poll() is None, proc.communicate()
        try:
            children |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.01)
    assert len(_complete_on_disk(out)) < N_CASES, "finished before the signal: make it bigger"
    if group:
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.splitlines() == [INTERRUPTED], err
    assert workers == 1 or children, "saw no worker processes"
    deadline = time.monotonic() + 5  # the resource tracker exits once the workers are gone
    while _alive(sorted(children)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(sorted(children))
    assert not (out / LOCK_NAME).exists()  # released on the way out
    _rerun_and_check(raw, out, clean)


def test_a_full_disk_while_writing_a_case_is_one_line(tiny_raw: Path, tiny_store: Path,
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    raw, clean = tiny_raw, tiny_store
    out = tmp_path / "full.zarr"
    real = store_write.write_array
    calls = {"n": 0}

    def write_array(group, name, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] > 4:  # the first case (4 arrays) gets written, then the disk fills up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(group, name, *a, **kw)

    monkeypatch.setattr(store_write, "write_array", write_array)
    rc, _, err = _cli([str(raw), str(out)], capsys)
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"{out}: disk full" in err and "rerun" in err
    on_disk = {p.name for p in (out / "cases").iterdir() if p.is_dir()}
    assert on_disk == {"synth_000"}  # the half-written cases were removed again
    monkeypatch.setattr(store_write, "write_array", real)
    rc, stdout, err = _cli([str(raw), str(out)], capsys)
    assert rc == 0 and "4 case(s) converted, 1 already complete" in stdout, err
    assert_same_store(clean, out)


def test_a_full_disk_in_finish_store_is_one_line(tiny_raw: Path, tiny_store: Path,
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    raw, clean = tiny_raw, tiny_store
    out = tmp_path / "full.zarr"
    real_replace = os.replace
    writes = {"root": 0}

    def replace(src, dst, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if Path(dst) == out / "zarr.json":
            writes["root"] += 1
            if writes["root"] == 2:  # the first is create_root, the second finish_store
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)
    rc, _, err = _cli([str(raw), str(out)], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and f"{out}: disk full" in err, err
    assert open_store(out).meta["complete"] is False  # the old root is intact
    monkeypatch.setattr(os, "replace", real_replace)
    rc, stdout, err = _cli([str(raw), str(out)], capsys)
    assert rc == 0 and "0 case(s) converted, 5 already complete" in stdout, err
    assert open_store(out).meta["complete"] is True
    assert_same_store(clean, out)
