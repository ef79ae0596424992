"""Exact resume: a run SIGKILLed mid-stage and resumed equals the uninterrupted run bit for bit.

Run A trains uninterrupted; run B (same flags, ``--deterministic``, CPU) is killed with
SIGKILL once a checkpoint is on disk and B has logged steps beyond it within the same
stage, then continued with ``--resume`` in the same folder. Every step's loss (steps.csv,
the repr of each float), every evaluation row (bar the timings), the final weights and the
optimizer state must be identical. Both runs are subprocesses with one torch thread each.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pgps_data import Curriculum
from pgps_train.checkpoint import FINAL, LATEST
from pgps_train.cli.train import main as train_main

PATCH = ["8", "16", "16"]
# efficiency, 10 stages × 3 iterations; a checkpoint at every stage end and every 7 steps
FLAGS = ["--preset", "tiny", "--fold", "all", "--mode", "efficiency", "--patch", *PATCH,
         "--epochs", "0", "--iterations-per-epoch", "3", "--eval-every", "8",
         "--save-every", "7", "--workers", "1", "--no-final-eval", "--deterministic", "--quiet"]
TIMINGS = ("seconds_compute", "seconds_wait", "seconds_augment", "seconds_validation", "seconds_validation_startup",
           "seconds_checkpoint", "seconds_loader_startup", "seconds_wall")


def _cmd(store: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pgps_train.cli.train", str(store), *FLAGS, "--out", str(out),
            *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _ckpt_step(out: Path) -> int | None:
    path = out / LATEST
    if not path.exists():
        return None
    return int(torch.load(path, weights_only=True)["step"])  # renamed into place: never partial


def _logged_steps(out: Path) -> list[int]:
    path = out / "steps.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [int(r[0]) for r in list(csv.reader(fh))[1:] if r and r[0].isdigit()]


def _rows(path: Path, drop: tuple[str, ...] = ()) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(fh)]


def _checkpoint_due(cur: Curriculum, done: int) -> bool:
    """Whether the trainer writes a checkpoint once ``done`` steps are done (FLAGS: every 7)."""
    return done % 7 == 0 or done >= cur.total_iterations or cur.stage_at(done - 1).end_iter == done


def _kill_mid_stage(proc: subprocess.Popen, out: Path, cur: Curriculum,
                    deadline: float) -> tuple[int, int]:
    """SIGKILL ``proc`` once a checkpoint at step c ≥ 6 exists, steps.csv shows step c (the
    first after it) and no checkpoint is due after this or the next step (so the kill lands
    mid-stage, a whole step before any newer checkpoint); returns (checkpoint step, last
    logged step) as found after the kill."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"run B ended (rc {proc.returncode}) before it could be killed")
        c = _ckpt_step(out)
        logged = _logged_steps(out)
        if c is not None and 6 <= c < cur.total_iterations - 3 and logged and logged[-1] >= c \
                and not any(_checkpoint_due(cur, logged[-1] + k) for k in (1, 2)):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return _ckpt_step(out), _logged_steps(out)[-1]  # type: ignore[return-value]
        time.sleep(0.01)
    proc.kill()
    pytest.fail("run B never reached a mid-stage point after a checkpoint")


def test_sigkill_mid_stage_then_resume_equals_uninterrupted(tiny_store: Path,
                                                            tmp_path: Path) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    done = subprocess.run(_cmd(tiny_store, a), env=_env(), capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    cur = Curriculum.from_dict(json.loads((a / "curriculum.json").read_text()))
    assert cur.total_iterations == 30 and len(cur.stages) == 10

    proc = subprocess.Popen(_cmd(tiny_store, b), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    c, last = _kill_mid_stage(proc, b, cur, time.monotonic() + 240)
    print(f"run B killed at checkpoint step {c}, steps logged through {last}")
    assert proc.returncode == -signal.SIGKILL
    assert c < cur.total_iterations and last >= c  # B had run past its checkpoint ...
    assert cur.stage_at(last).index == cur.stage_at(c).index  # ... and was killed mid-stage
    assert cur.stage_at(last).end_iter > last + 1
    assert not (b / FINAL).exists()

    resumed = subprocess.run(_cmd(tiny_store, b, "--resume"), env=_env(), capture_output=True,
                             text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    # every step's loss, bit for bit (repr of the float), and nothing logged twice
    steps_a, steps_b = (a / "steps.csv").read_text(), (b / "steps.csv").read_text()
    assert steps_a.count("\n") == cur.total_iterations + 1
    assert steps_b == steps_a
    # evaluation rows equal bar the timings (loss, pseudo-Dice, lr, stage, patch, batch)
    assert _rows(b / "log.csv", TIMINGS) == _rows(a / "log.csv", TIMINGS)
    assert len(_rows(a / "log.csv")) == 4  # steps 7, 15, 23 and the last

    # the summary's totals cover the whole run (the checkpoint carried the run log's):
    # the same steps per stage, voxels, delivered foreground and pseudo-Dice points, on
    # one clock that continues across the kill
    sum_a, sum_b = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sum_b["resumed_at_step"] == c and sum_b["totals"] == "whole run"
    assert "foreground_partial" not in sum_b and "resumed_at_step" not in sum_a
    assert [st["steps"] for st in sum_b["stages"]] == [3] * 10 == \
        [st["steps"] for st in sum_a["stages"]]
    assert sum_b["voxels"] == sum_a["voxels"]
    assert [st["foreground"] for st in sum_b["stages"]] == \
        [st["foreground"] for st in sum_a["stages"]]
    times = [t for t, _ in sum_b["curve"]]
    assert len(times) == len(sum_a["curve"]) == 4 and times == sorted(times)
    assert times[0] > 0 and sum_b["seconds_train"] > times[-1] - 1e-3
    assert [d for _, d in sum_b["curve"]] == [d for _, d in sum_a["curve"]]

    final_a = torch.load(a / FINAL, weights_only=True)
    final_b = torch.load(b / FINAL, weights_only=True)
    assert final_a["model"].keys() == final_b["model"].keys()
    for key, value in final_a["model"].items():
        assert torch.equal(value, final_b["model"][key]), key
    opt_a = torch.load(a / LATEST, weights_only=True)["optimizer"]
    opt_b = torch.load(b / LATEST, weights_only=True)["optimizer"]
    assert opt_a["param_groups"] == opt_b["param_groups"]
    for idx, state in opt_a["state"].items():
        assert torch.equal(state["momentum_buffer"], opt_b["state"][idx]["momentum_buffer"])

    # a resume continues the run it came from: another seed is refused in one line
    lines: list[str] = []
    rc = _run_main([str(tiny_store), *FLAGS, "--out", str(a), "--resume", "--seed", "1"],
                   lines)
    assert rc == 2 and len(lines) == 1, lines
    assert "--seed 1 differs from the run's 0" in lines[0] and "config.json" in lines[0]


def _run_main(argv: list[str], err: list[str]) -> int:
    """``pgps-train`` in-process (stderr lines into ``err``), keeping global torch flags."""
    import contextlib
    import io

    determ, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(io.StringIO()):
            rc = train_main(argv)
    finally:
        torch.use_deterministic_algorithms(determ)
        torch.set_num_threads(threads)
    err.extend(buf.getvalue().strip().splitlines())
    return rc
