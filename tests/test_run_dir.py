"""The run folder: pgps-train never writes over another run or a user's folder by accident,
and two runs never write one folder at once."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest

from pgps_data.errors import PGPSInputError
from pgps_train.cli_train import main as train_main
from pgps_train.run_dir import check_run_folder, run_lock
from tests.torch_threads import one_thread

BASE = ["--preset", "tiny", "--fold", "all", "--patch", "8", "16", "16", "--workers", "1",
        "--iterations-per-epoch", "2", "--no-final-eval", "--quiet"]


def _cli(argv: list[str]) -> tuple[int, list[str]]:
    err = io.StringIO()
    with one_thread(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = train_main(argv)
    return rc, err.getvalue().strip().splitlines()


def test_check_run_folder_rules(tmp_path: Path) -> None:
    check_run_folder(tmp_path / "new", resume=False, overwrite=False)  # a new folder: fine
    (tmp_path / "empty").mkdir()
    check_run_folder(tmp_path / "empty", resume=False, overwrite=False)

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    with pytest.raises(PGPSInputError, match="holds a pgps-train run already; add --resume"):
        check_run_folder(run, resume=False, overwrite=False)
    check_run_folder(run, resume=True, overwrite=False)
    check_run_folder(run, resume=False, overwrite=True)

    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("my notes")
    for resume, overwrite in ((False, False), (True, False), (False, True)):
        with pytest.raises(PGPSInputError, match="not a pgps-train run.*notes.txt"):
            check_run_folder(user, resume=resume, overwrite=overwrite)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PGPSInputError, match="is not a folder"):
        check_run_folder(tmp_path / "file", resume=False, overwrite=False)


def test_a_second_run_into_a_held_folder_is_refused(tmp_path: Path) -> None:
    with run_lock(tmp_path / "run"):
        with pytest.raises(PGPSInputError, match=r"another training run is writing.*:\d+"):
            with run_lock(tmp_path / "run"):
                pass
    with run_lock(tmp_path / "run"):  # released with its holder: free again
        pass


def test_train_refuses_a_run_folder_without_resume_or_overwrite(
    tiny_store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    rc, lines = _cli([str(tiny_store), "--out", str(out), *BASE])
    assert rc == 0, lines
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir() if p.is_file()}

    rc, lines = _cli([str(tiny_store), "--out", str(out), *BASE])
    assert rc == 2 and len(lines) == 1 and "holds a pgps-train run already" in lines[0], lines
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir() if p.is_file()}
    assert after == before  # nothing of the first run was touched

    rc, lines = _cli([str(tiny_store), "--out", str(out), *BASE, "--overwrite"])
    assert rc == 0, lines


def test_train_never_writes_into_a_users_folder(tiny_store: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json.bak").write_text("keep me")
    rc, lines = _cli([str(tiny_store), "--out", str(mine), *BASE, "--overwrite"])
    assert rc == 2 and len(lines) == 1 and "not a pgps-train run" in lines[0], lines
    assert os.listdir(mine) == ["config.json.bak"]
    assert (mine / "config.json.bak").read_text() == "keep me"
