"""The run folder: pgps-train never writes over another run or a user's folder by accident,
and two runs never write one folder at once."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import torch

from pgps_data.errors import PGPSInputError
from pgps_train.cli.train import main as train_main
from pgps_train.run_dir import RUN_OUTPUTS, check_run_folder, clear_run, run_lock
from tests.torch_threads import one_thread

BASE = ["--preset", "tiny", "--fold", "all", "--patch", "8", "16", "16", "--workers", "1",
        "--iterations-per-epoch", "2", "--no-final-eval", "--quiet"]


RUN_CONFIG = {"store": "s.zarr", "out": "run", "mode": "efficiency", "net": "unet",
              "rules": "journal-2025", "seed": 0}


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
    (run / "config.json").write_text(json.dumps(RUN_CONFIG))
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


def test_a_users_config_json_is_not_a_run(tiny_store: Path, tmp_path: Path) -> None:
    """A folder is a run by its config.json's content, not by file names."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    (mine / "summary.json").write_text('{"mine": true}')
    rc, lines = _cli([str(tiny_store), "--out", str(mine), *BASE, "--overwrite"])
    assert rc == 2 and len(lines) == 1 and "not a pgps-train run" in lines[0], lines
    assert (mine / "config.json").read_text() == '{"my": "settings"}'
    assert sorted(os.listdir(mine)) == ["config.json", "summary.json"]


def test_overwrite_clears_only_the_previous_runs_own_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)
    (run / "validation").mkdir()
    for name in RUN_OUTPUTS:
        if name not in ("tensorboard", "validation"):
            (run / name).write_text("old")
    (run / "config.json").write_text(json.dumps(RUN_CONFIG))
    (run / "my_notes.txt").write_text("keep")
    clear_run(run)
    assert os.listdir(run) == ["my_notes.txt"]  # the old checkpoints can never be resumed


def test_overwrite_after_a_finished_run_starts_from_step_0(tiny_store: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _cli([str(tiny_store), "--out", str(out), *BASE, "--seed", "1"])[0] == 0
    old = torch.load(out / "checkpoint_latest.pt", weights_only=True)["step"]
    (out / "checkpoint_latest.pt").rename(out / "keep.pt")  # only the final one stays
    rc, lines = _cli([str(tiny_store), "--out", str(out), *BASE, "--overwrite",
                      "--max-seconds", "0.001"])
    assert rc == 0, lines
    new = torch.load(out / "checkpoint_latest.pt", weights_only=True)["step"]
    assert new < old and (out / "keep.pt").is_file()


def test_a_gpu_run_resumes_on_a_machine_without_one(tiny_store: Path, tmp_path: Path) -> None:
    """--device is chosen per command (like --workers), not read back from config.json."""
    out = tmp_path / "run"
    assert _cli([str(tiny_store), "--out", str(out), *BASE, "--max-seconds", "0.001"])[0] == 0
    config = json.loads((out / "config.json").read_text())
    config["device"] = "cuda"  # as a run started on a GPU machine records it
    (out / "config.json").write_text(json.dumps(config))
    rc, lines = _cli([str(tiny_store), "--out", str(out), "--resume", "--quiet"])
    assert rc == 0, lines
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert json.loads((out / "config.json").read_text())["device"] == want


def test_parallel_folds_share_one_store_read_only(tiny_store: Path, tmp_path: Path) -> None:
    """The README's parallel-folds recipe: two pgps-train processes on one store at once
    (another fold and run folder each) both finish, and the store is not written."""
    import subprocess
    import sys

    def snapshot() -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in tiny_store.rglob("*") if p.is_file()}

    from pgps_data import open_store

    ids = open_store(tiny_store).case_ids
    splits = tmp_path / "splits_final.json"
    splits.write_text(json.dumps([{"train": ids[2:], "val": ids[:2]},
                                  {"train": ids[:2], "val": ids[2:]}]))
    before = snapshot()
    flags = [a for a in BASE if a not in ("--fold", "all")] + ["--splits", str(splits)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "pgps_train.cli.train", str(tiny_store),
                               *flags, "--fold", str(k), "--out", str(tmp_path / f"fold{k}"),
                               "--device", "cpu"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for k in (0, 1)]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
    for k in (0, 1):
        config = json.loads((tmp_path / f"fold{k}" / "config.json").read_text())
        assert str(config["fold"]) == str(k)
        assert (tmp_path / f"fold{k}" / "summary.json").is_file()
    assert snapshot() == before
