"""`--budget seconds`: each mode's run length planned so its whole schedule fits its seed's
constant time, from measured step times where the comparison has them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pgps_data import Curriculum
from pgps_data.errors import PGPSInputError
from pgps_train.comparison.budget import plan_length

PATCH, STEPS = (32, 64, 64), (8, 16, 16)


def _cur(mode: str, epochs: int, ipe: int) -> Curriculum:
    return Curriculum(PATCH, STEPS, epochs=epochs, iterations_per_epoch=ipe, batch=2,
                      mode=mode, rules="journal-2025")


def _run(folder: Path, cur: Curriculum, seconds_per_step, *, overhead: float = 0.0,
         epochs_auto: bool = True, resumed: bool = False, median=None) -> Path:
    """A finished run folder as pgps-train leaves it (the files the planner reads)."""
    folder.mkdir(parents=True)
    stages = [{"stage": s.index, "patch": list(s.patch), "batch": s.batch, "steps": s.iterations,
               "seconds_per_step": seconds_per_step(s),
               **({"seconds_per_step_median": median(s)} if median else {})} for s in cur.stages]
    train = overhead + sum(st["steps"] * st["seconds_per_step"] for st in stages)
    summary = {"seconds_train": train, "stages": stages,
               **({"resumed_at_step": 5} if resumed else {})}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "curriculum.json").write_text(json.dumps(cur.to_dict()))
    (folder / "config.json").write_text(json.dumps({"epochs": 0 if epochs_auto else cur.epochs}))
    return folder


def _voxel_time(s) -> float:  # a CPU-like step: proportional to the voxels per step
    return 1e-6 * s.batch * s.voxels


def test_modelled_plan_fits_constant_and_one_more_would_not(tmp_path):
    S = len(_cur("efficiency", 10**6, 1).stages)
    const = _run(tmp_path / "c", _cur("constant", S, 30), _voxel_time, overhead=4.0)
    plan = plan_length(const, "efficiency")
    assert plan["step_times"].startswith("modelled") and plan["epochs"] == 0
    target = json.loads((const / "summary.json").read_text())["seconds_train"]
    assert plan["target_seconds"] == pytest.approx(target, abs=0.01)
    # its schedule, timed as the model times it, fits; one iteration per epoch more does not
    for ipe, fits in ((plan["iterations_per_epoch"], True), (plan["iterations_per_epoch"] + 1, False)):
        cur = _cur("efficiency", S, ipe)
        seconds = 4.0 + sum(_voxel_time(s) * s.iterations for s in cur.stages)
        assert (seconds <= target) is fits
    # efficiency's crops are smaller: the same seconds buy it more iterations than constant's
    assert plan["iterations"] > 1.5 * 30 * S


def test_measured_step_times_are_used_where_present(tmp_path):
    S = len(_cur("performance", 10**6, 1).stages)
    const = _run(tmp_path / "c", _cur("constant", S, 20), lambda s: 0.5)
    # performance measured at equal iterations: every step costs 0.25 s, whatever its size
    ref = _run(tmp_path / "p", _cur("performance", S, 20), lambda s: 0.25)
    plan = plan_length(const, "performance", reference_run=ref)
    assert plan["step_times"] == "measured"
    assert plan["iterations_per_epoch"] == 40  # exactly twice as many 0.25-s steps
    assert plan["planned_seconds"] == pytest.approx(0.5 * 20 * S)


def test_a_stages_start_is_paid_once_however_long_the_stage(tmp_path):
    """Measured stages cost a fixed start (mean less median, times the steps) plus the
    median per step, and the reference run's own time outside its steps: planning with the
    mean alone would spread the starts over every step and plan too short a run."""
    S = len(_cur("performance", 10**6, 1).stages)
    const = _run(tmp_path / "c", _cur("constant", S, 20), lambda s: 0.5, overhead=3.0)
    # each stage's start costs 2 s more than its 20 steps of 0.25 s: mean 0.35 s per step
    ref = _run(tmp_path / "p", _cur("performance", S, 20), lambda s: 0.35, overhead=3.0,
               median=lambda s: 0.25)
    plan = plan_length(const, "performance", reference_run=ref)
    # 3 + S * (2 + 0.25 n) <= 3 + 10 S  ->  n = 32 (the mean alone gives 28)
    assert plan["iterations_per_epoch"] == 32
    assert plan["planned_seconds"] == pytest.approx(3 + S * (2 + 0.25 * 32))


def test_many_epochs_scale_the_epochs_not_their_length(tmp_path):
    const = _run(tmp_path / "c", _cur("constant", 100, 25), lambda s: 0.2, epochs_auto=False)
    ref = _run(tmp_path / "e", _cur("efficiency", 100, 25), lambda s: 0.1, epochs_auto=False)
    plan = plan_length(const, "efficiency", reference_run=ref)
    assert plan["iterations_per_epoch"] == 25 and plan["epochs"] == 200


def test_a_resumed_or_unfinished_constant_cannot_be_planned_from(tmp_path):
    S = len(_cur("efficiency", 10**6, 1).stages)
    resumed = _run(tmp_path / "r", _cur("constant", S, 10), lambda s: 0.1, resumed=True)
    with pytest.raises(PGPSInputError, match="resumed after a stop"):
        plan_length(resumed, "efficiency")
    # a run resumed from a checkpoint that carried the totals times the whole run
    whole = _run(tmp_path / "w", _cur("constant", S, 10), lambda s: 0.1, resumed=True)
    summary = json.loads((whole / "summary.json").read_text())
    (whole / "summary.json").write_text(json.dumps({**summary, "totals": "whole run"}))
    assert plan_length(whole, "efficiency")["target_seconds"] == pytest.approx(0.1 * 10 * S)
    with pytest.raises(PGPSInputError, match="not a finished pgps-train run"):
        plan_length(tmp_path / "missing", "efficiency")
    assert math.isfinite(plan_length(_run(tmp_path / "ok", _cur("constant", S, 10),
                                          lambda s: 0.1), "efficiency")["planned_seconds"])
