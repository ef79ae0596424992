"""Writing a store safely (issue 7): deletes that stay inside the store, one writer at a
time, an atomic root, the store's identity, and the message when every case is refused.
Each test reproduces the probe that found the problem. (Stopping a conversion: Ctrl-C,
SIGTERM, a full disk, a closed stdout, is in test_convert_crash.py.)"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from pgps_data.cli.convert import main as convert_main
from pgps_data.errors import PGPSInputError
from pgps_data.raw.convert import convert
from pgps_data.store.completeness import is_complete
from pgps_data.store.lock import LOCK_NAME, store_lock
from pgps_data.store.store import open_store
from pgps_data.store.write import (
    check_target,
    content_checksum,
    create_root,
    safe_remove,
    write_case,
)
from pgps_data.synthetic.dataset import write_synthetic_dataset
from tests.conftest import assert_same_store

ROOT = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()
INTERRUPTED = "pgps-convert: interrupted; rerun the same command to continue"


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small training cases and one test case (fast to convert)."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("safe") / "Task03_Safe", cases=3,
                                   test_cases=1, size=(16, 32, 32), seed=7)


@pytest.fixture(scope="module")
def slow_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Large enough that a conversion is still running when a test stops it."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("slow") / "Task06_Slow", cases=6,
                                   test_cases=0, size=(32, 80, 80), seed=4)


@pytest.fixture(scope="module")
def clean(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "clean.zarr"
    assert convert(raw, out, quiet=True, log=lambda _: None)["errors"] == []
    return out


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    rc = convert_main([*argv, "--workers", "1", "--quiet"])
    got = capsys.readouterr()
    assert "Traceback" not in got.err + got.out
    return rc, got.out, got.err


def _popen(raw: Path, out: Path, workers: int = 1, **kw) -> subprocess.Popen:  # noqa: ANN003
    return subprocess.Popen(
        [sys.executable, "-m", "pgps_data.cli.convert", str(raw), str(out),
         "--workers", str(workers), "--quiet"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _run(raw: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pgps_data.cli.convert", str(raw), str(out), "--workers",
         "1", "--quiet", *extra], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _complete(out: Path) -> int:
    n = 0
    for meta in out.glob("cases/*/zarr.json"):
        try:
            n += is_complete(json.loads(meta.read_text()).get("attributes", {}))
        except (OSError, ValueError):
            pass
    return n


def _fresh_store(path: Path) -> Path:
    assert check_target(path, "test", overwrite=False) is None  # nothing there: a new root
    create_root(path, {"inputs_fingerprint": "test"})
    return path


def _case_arrays() -> dict:
    rng = np.random.default_rng(0)
    label = (rng.random((8, 8, 8)) > 0.5).astype(np.uint8)
    return {"image": rng.random((1, 8, 8, 8)).astype(np.float32), "label": label,
            "indices": {1: np.argwhere(label == 1)}, "annotated": None, "attrs": {}}


# ------------------------------------------------------------------ 1: the delete guard


@pytest.mark.parametrize("case_id", ["..", "../x", "ABSOLUTE", "", "a/b", "."])
def test_unsafe_case_ids_are_refused_and_nothing_is_deleted(tmp_path: Path, case_id: str) -> None:
    store = _fresh_store(tmp_path / "s.zarr")
    (store / "x").mkdir()
    (store / "x" / "mine.txt").write_text("user data")  # what "../x" would reach
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("do not delete")
    if case_id == "ABSOLUTE":
        case_id = str(victim)  # cases/ / "/abs" is "/abs"
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(PGPSInputError, match="not a safe name"):
        write_case(store, case_id, **_case_arrays())
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert (victim / "thesis.txt").read_text() == "do not delete"
    assert (store / "zarr.json").is_file()


def test_symlinked_case_folders_are_never_followed_into(tmp_path: Path) -> None:
    store = _fresh_store(tmp_path / "s.zarr")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "synth_000").mkdir(parents=True)
    (elsewhere / "synth_000" / "keep.txt").write_text("user data")
    (store / "cases" / "evil").symlink_to(elsewhere / "synth_000")
    with pytest.raises(PGPSInputError, match="refusing to delete"):
        write_case(store, "evil", **_case_arrays())
    assert (elsewhere / "synth_000" / "keep.txt").is_file()
    # a cases/ folder that is a symlink out of the store: its "case" is not ours either
    shutil.rmtree(store / "cases")
    (store / "cases").symlink_to(elsewhere)
    with pytest.raises(PGPSInputError, match="refusing to delete"):
        write_case(store, "synth_000", **_case_arrays())
    assert (elsewhere / "synth_000" / "keep.txt").read_text() == "user data"
    for target in (elsewhere, tmp_path, store / "x", store / "cases" / "synth_000"):
        with pytest.raises(PGPSInputError, match="nothing was deleted"):
            safe_remove(target, store)
    assert (elsewhere / "synth_000" / "keep.txt").is_file()


# ------------------------------------------------------------------ 3: one writer at a time


def test_a_second_conversion_refuses_and_a_kill9_needs_no_cleanup(
        slow_raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "busy.zarr"
    first = _popen(slow_raw, out)
    holder = f"{HOST}:{first.pid}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            try:
                if (out / LOCK_NAME).read_text().strip() == holder:
                    break
            except OSError:
                pass
            time.sleep(0.002)
        os.kill(first.pid, signal.SIGSTOP)  # frozen while it holds the lock
        assert first.poll() is None, "finished before the test could hold it: make it bigger"
        second = _run(slow_raw, out)
        assert second.returncode == 2, second.stdout + second.stderr
        assert len(second.stderr.splitlines()) == 1, second.stderr
        assert holder in second.stderr and str(out) in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.communicate(timeout=30)
    assert (out / LOCK_NAME).exists()  # the dead holder's file is still there, unlocked
    rerun = _run(slow_raw, out)  # no cleanup of any kind in between
    assert rerun.returncode == 0, rerun.stderr
    store = open_store(out)
    assert store.case_ids == [f"synth_{n:03d}" for n in range(6)] and store.meta["complete"]
    assert not (out / LOCK_NAME).exists()


def test_overwrite_never_deletes_the_held_lock(clean: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.zarr"
    shutil.copytree(clean, out)
    with store_lock(out) as lock:
        inode = lock.stat().st_ino
        assert lock.read_text().strip() == f"{HOST}:{os.getpid()}"
        assert check_target(out, "other", overwrite=True) is None  # --overwrite: a new root
        create_root(out, {"inputs_fingerprint": "other"})
        assert lock.stat().st_ino == inode
        assert not [p for p in (out / "cases").iterdir() if p.is_dir()]  # cases went, lock stayed
    assert not lock.exists()


def test_a_case_missing_an_array_is_converted_again(raw: Path, clean: Path,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "hole.zarr"
    shutil.copytree(clean, out)
    shutil.rmtree(out / "cases" / "synth_001" / "label")  # flag says complete, label gone
    summary = convert(raw, out, quiet=True, log=lambda _: None)
    assert summary["converted"] == 1 and summary["skipped"] == 3 and not summary["errors"]
    assert_same_store(clean, out)


def test_a_case_missing_an_index_array_is_converted_again(raw: Path, clean: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "hole.zarr"
    shutil.copytree(clean, out)
    shutil.rmtree(out / "cases" / "synth_002" / "fg_1")
    summary = convert(raw, out, quiet=True, log=lambda _: None)
    assert summary["converted"] == 1 and summary["skipped"] == 3
    assert_same_store(clean, out)


# ------------------------------------------------------------------ 4: the atomic root


def _old_bare_root(path: Path) -> None:
    """What an older pgps left when killed between creating the root and its attributes."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.require_group("cases")
    root.require_group("test")


def test_a_bare_root_is_cleared_by_overwrite(raw: Path, clean: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bare.zarr"
    _old_bare_root(out)
    rc, _, err = _cli([str(raw), str(out)], capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    assert str(out) in err and "--overwrite" in err
    rc, _, err = _cli([str(raw), str(out), "--overwrite"], capsys)
    assert rc == 0, err
    assert_same_store(clean, out)


def test_overwrite_never_deletes_user_data_next_to_a_zarr_group(
        raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "mine.zarr"
    _old_bare_root(out)
    (out / "notes.txt").write_text("user data")
    zarr.open_group(str(out), mode="r+").create_array("scan", shape=(4,), dtype="f4")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    for extra in ([], ["--overwrite"]):
        rc, _, err = _cli([str(raw), str(out), *extra], capsys)
        assert rc == 2 and "not a pgps store" in err and len(err.splitlines()) == 1
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert (out / "notes.txt").read_text() == "user data"


def test_the_root_is_written_in_one_step(raw: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    """Every version of the root's zarr.json that ever lands on disk carries our attributes
    (no window with a bare group), and a write that fails leaves a folder a rerun uses."""
    out = tmp_path / "atomic.zarr"
    seen: list[dict] = []
    real_replace = os.replace

    def spy(src, dst, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        real_replace(src, dst, *a, **kw)
        if Path(dst) == out / "zarr.json":
            seen.append(json.loads(Path(dst).read_text())["attributes"])

    monkeypatch.setattr(os, "replace", spy)
    rc, _, err = _cli([str(raw), str(out)], capsys)
    assert rc == 0, err
    assert seen and all(a.get("format") == "pgps" and a.get("creation_id") for a in seen)

    def fail(src, dst, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if Path(dst) == tmp_path / "again.zarr" / "zarr.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", fail)
    rc, _, err = _cli([str(raw), str(tmp_path / "again.zarr")], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and "disk full" in err
    assert str(tmp_path / "again.zarr") in err
    assert not (tmp_path / "again.zarr" / "zarr.json").exists()
    monkeypatch.setattr(os, "replace", real_replace)
    rc, out_text, err = _cli([str(raw), str(tmp_path / "again.zarr")], capsys)
    assert rc == 0 and "4 case(s) converted" in out_text, err


# ------------------------------------------------------------------ 7: the store's identity


def test_identity_differs_between_conversions_and_survives_a_rerun(
        raw: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    convert(raw, a, spacing=(2.0, 1.0, 1.0), quiet=True, log=lambda _: None)
    convert(raw, b, spacing=(3.0, 1.5, 1.5), quiet=True, log=lambda _: None)
    sa, sb = open_store(a), open_store(b)
    assert sa.meta["creation_id"] != sb.meta["creation_id"]
    sums_a = {c.id: c.meta["checksum"] for c in sa}
    for case in sb:
        assert case.meta["checksum"].startswith("sha256:")
        assert case.meta["checksum"] != sums_a[case.id]
    # the checksum is the arrays as stored: a reader recomputes it from the store
    for case in sa:
        names = ["image", "label", *case.meta["index_arrays"]]
        assert content_checksum([(n, case.group[n][...]) for n in names]) == sums_a[case.id]
    test_case = sa[sa.test_ids[0]]
    assert test_case.meta["checksum"] == content_checksum([("image", test_case.image[...])])
    # a continued conversion keeps the identity
    shutil.rmtree(a / "cases" / "synth_000")
    summary = convert(raw, a, spacing=(2.0, 1.0, 1.0), quiet=True, log=lambda _: None)
    assert summary["converted"] == 1
    again = open_store(a)
    assert again.meta["creation_id"] == sa.meta["creation_id"]
    assert {c.id: c.meta["checksum"] for c in again} == sums_a
    # --overwrite makes a new store: a new creation id, the same content
    convert(raw, a, spacing=(2.0, 1.0, 1.0), overwrite=True, quiet=True, log=lambda _: None)
    fresh = open_store(a)
    assert fresh.meta["creation_id"] != sa.meta["creation_id"]
    assert {c.id: c.meta["checksum"] for c in fresh} == sums_a


# ------------------------------------------------------------------ 9: every case refused


def test_every_case_refused_prints_each_reason_then_one_line(
        raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "Task04_Bad"
    shutil.copytree(raw, bad)
    for image in (bad / "imagesTr").glob("*.nii.gz"):
        image.write_bytes(image.read_bytes()[:200])  # truncated: unreadable
    out = tmp_path / "none.zarr"
    rc, stdout, err = _cli([str(bad), str(out)], capsys)
    assert rc == 2
    reasons = [line for line in stdout.splitlines() if line.startswith("error:")]
    assert len(reasons) == 3
    for n in range(3):
        assert sum(f"synth_{n:03d}.nii.gz" in line for line in reasons) == 1, reasons
    assert len(err.splitlines()) == 1 and "no usable training case" in err
    assert "3 case(s) refused" in err and "foreground" not in err
    assert not out.exists()  # nothing was written, not even the lock's folder


def test_the_raw_folder_given_as_output_is_never_touched(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    raw = write_synthetic_dataset(tmp_path / "data" / "Task09_Twice", cases=2, test_cases=0,
                                  size=(16, 32, 32), seed=3)
    before = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*")
                    if p.is_file())
    for out in (raw, raw.parent):  # OUT = RAW_DIR, and OUT holding RAW_DIR
        for extra in ([], ["--overwrite"]):
            rc, _, err = _cli([str(raw), str(out), *extra], capsys)
            assert rc == 2 and "nothing was written" in err and len(err.strip().splitlines()) == 1
    after = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*")
                   if p.is_file())
    assert after == before


def test_raw_data_inside_the_output_store_is_never_deleted(raw: Path, clean: Path,
                                                           tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    store = tmp_path / "s.zarr"
    shutil.copytree(clean, store)
    inside = store / "cases" / "Task03_Safe"  # a user keeps the raw data inside the store
    shutil.copytree(raw, inside)
    rc, _, err = _cli([str(inside), str(store), "--overwrite"], capsys)
    assert rc == 2 and "holds it" in err
    assert (inside / "dataset.json").is_file() and sorted(inside.rglob("*.nii.gz"))


def test_case_folders_of_a_folder_that_is_not_a_pgps_store_are_never_deleted(
    tmp_path: Path,
) -> None:
    user = tmp_path / "userdir"
    (user / "cases" / "synth_000").mkdir(parents=True)
    (user / "cases" / "synth_000" / "notes.txt").write_text("precious")
    with pytest.raises(PGPSInputError, match="nothing was deleted"):
        safe_remove(user / "cases" / "synth_000", user)
    assert (user / "cases" / "synth_000" / "notes.txt").read_text() == "precious"


def test_workers_get_an_absolute_store_path(raw: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """dask.distributed workers resolve a relative OUT against their own working folder."""
    import pgps_data.raw.convert as convert_mod

    seen: list[Path] = []
    real = convert_mod.run_per_case

    def spy(fn, items, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.extend(item[2] for item in items if fn is convert_mod.convert_case)
        return real(fn, items, **kw)

    monkeypatch.setattr(convert_mod, "run_per_case", spy)
    monkeypatch.chdir(tmp_path)
    convert(raw, "rel.zarr", quiet=True, log=lambda _: None)
    assert seen and all(p == tmp_path / "rel.zarr" and p.is_absolute() for p in seen)


def test_check_target_decides_once_and_writes_nothing(clean: Path, tmp_path: Path) -> None:
    """The one check of an output path (write.check_target): refuse, continue (the old
    root's attributes) or start (None), without touching the folder in any case."""
    out = tmp_path / "t.zarr"
    shutil.copytree(clean, out)
    fingerprint = open_store(out).meta["inputs_fingerprint"]
    before = sorted((str(p), p.stat().st_mtime_ns) for p in out.rglob("*"))
    previous = check_target(out, fingerprint, overwrite=False)
    assert previous is not None and previous["creation_id"] == open_store(out).meta["creation_id"]
    assert check_target(out, fingerprint, overwrite=True) is None
    assert check_target(out, "other", overwrite=True) is None
    with pytest.raises(PGPSInputError, match="different inputs or options.*--overwrite"):
        check_target(out, "other", overwrite=False)
    assert check_target(tmp_path / "new.zarr", "other", overwrite=False) is None
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "a.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(PGPSInputError, match="is not a pgps store"):
            check_target(tmp_path / "user", fingerprint, overwrite=overwrite)
    assert sorted((str(p), p.stat().st_mtime_ns) for p in out.rglob("*")) == before
    assert not (tmp_path / "new.zarr").exists()
