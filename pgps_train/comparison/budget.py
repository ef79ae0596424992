"""Equal-seconds budgets (`pgps-compare run --budget seconds`): plan a mode's run length so
its whole schedule, with the learning rate falling to 0, fits constant's measured time.

A run is never cut short: its length (epochs, or iterations per epoch when there is one
epoch per stage) is chosen before it starts, from a time for every stage of its schedule.
That time is *measured* where the comparison already trained the same mode at equal
iterations: per stage (same patch and batch) a fixed start (the stage's seconds less its
median step time × its steps: new shapes, a loader refilling) plus the median step time per
step, and that run's own time outside the steps (loader start, stage changes). Otherwise it
is *modelled* from constant's mean step time scaled by the voxels per step (what a CPU
pays; a GPU pays relatively more for small steps, so a modelled plan can overrun there)
plus constant's time outside the steps. The report prints the planned and the measured
seconds, so a miss is visible, not hidden.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pgps_data import Curriculum
from pgps_data.errors import PGPSInputError

StageKey = tuple[tuple[int, ...], int]  # (patch, batch)


def stage_step_seconds(summary: Mapping[str, Any]) -> dict[StageKey, float]:
    """{(patch, batch): mean seconds per step} of a finished run's summary.json stages."""
    return {(tuple(st["patch"]), int(st["batch"])): float(st["seconds_per_step"])
            for st in summary.get("stages") or [] if st.get("steps")}


def stage_costs(summary: Mapping[str, Any]) -> dict[StageKey, tuple[float, float]]:
    """{(patch, batch): (fixed seconds, seconds per step)} of a finished run's stages.

    The per-step cost is the stage's median step time and the fixed cost what its steps
    took beyond that (its first steps); a summary without medians (older runs) gives the
    mean and no fixed cost.
    """
    costs = {}
    for st in summary.get("stages") or []:
        if not st.get("steps"):
            continue
        mean = float(st["seconds_per_step"])
        steady = float(st.get("seconds_per_step_median") or mean)
        costs[(tuple(st["patch"]), int(st["batch"]))] = (max(0.0, (mean - steady) * st["steps"]),
                                                         steady)
    return costs


def outside_steps(summary: Mapping[str, Any]) -> float:
    """A run's training seconds outside its steps (loader start, stage changes)."""
    inside = sum(float(st["seconds_per_step"]) * st["steps"] for st in summary.get("stages") or [])
    return max(0.0, float(summary["seconds_train"]) - inside)


def plan_length(constant_run: Path, mode: str, *,
                reference_run: Path | None = None) -> dict[str, Any]:
    """The epochs and iterations per epoch that fit ``mode`` into constant's seconds_train.

    ``constant_run`` is the finished constant run of the same seed; ``reference_run``, when
    given and finished, a run of ``mode`` at equal iterations whose per-stage step times
    are used. Returns the plan (what was chosen, the predicted and target seconds, and
    whether the step times were measured or modelled).
    """
    summary, cur_c, one_per_stage = _finished(constant_run)
    target = float(summary["seconds_train"])
    steps_c = stage_step_seconds(summary)
    if len(steps_c) != 1:
        raise PGPSInputError(f"{constant_run}: not a constant-mode run (one stage expected)")
    (((patch_c, batch_c), t_c),) = steps_c.items()
    overhead = outside_steps(summary)
    measured: dict[StageKey, tuple[float, float]] = {}
    if reference_run is not None and (reference_run / "summary.json").is_file():
        reference = _finished(reference_run)[0]
        measured, overhead = stage_costs(reference), outside_steps(reference)
    per_voxel = t_c / (batch_c * math.prod(patch_c))

    def predicted(cur: Curriculum) -> tuple[float, bool]:
        total, modelled = overhead, False
        for st in cur.stages:
            fixed, t = measured.get((tuple(st.patch), st.batch), (0.0, None))
            if t is None:
                t, modelled = per_voxel * st.batch * st.voxels, True
            total += fixed + t * st.iterations
        return total, modelled

    stages = len(_curriculum(cur_c, mode, 10**6, 1).patch_sizes) if mode != "constant" else 1

    def build(length: int) -> Curriculum:
        if one_per_stage:  # the tiny presets: one epoch per stage, the epoch's length varies
            return _curriculum(cur_c, mode, max(cur_c.epochs, stages), length)
        return _curriculum(cur_c, mode, length, cur_c.iterations_per_epoch)

    length = cur_c.iterations_per_epoch if one_per_stage else cur_c.epochs
    low = 1 if one_per_stage else stages
    seconds, _ = predicted(build(length))
    if seconds > overhead:  # linear in the length: a first guess, then walk to the largest fit
        length = max(low, int(length * (target - overhead) / (seconds - overhead)))
    while length > low and predicted(build(length))[0] > target:
        length -= 1
    while predicted(build(length + 1))[0] <= target:
        length += 1
    cur = build(length)
    seconds, modelled = predicted(cur)
    return {"mode": mode, "epochs": 0 if one_per_stage else cur.epochs, "iterations_per_epoch": cur.iterations_per_epoch,
            "iterations": cur.total_iterations, "planned_seconds": round(seconds, 2),
            "target_seconds": round(target, 2),
            "step_times": "modelled (constant's per voxel)" if modelled else "measured",
            "constant_run": str(constant_run)}


def _finished(run: Path) -> tuple[dict[str, Any], Curriculum, bool]:
    """A finished run's summary, curriculum, and whether it has one epoch per stage
    (epochs 0 in its config.json, the tiny presets)."""
    try:
        summary = json.loads((run / "summary.json").read_text())
        cur = Curriculum.from_dict(json.loads((run / "curriculum.json").read_text()))
        one_per_stage = json.loads((run / "config.json").read_text())["epochs"] == 0
    except (OSError, ValueError, KeyError) as exc:
        raise PGPSInputError(f"{run}: not a finished pgps-train run to plan from ({exc})") from None
    if summary.get("resumed_at_step") and summary.get("totals") != "whole run":
        raise PGPSInputError(f"{run}: was resumed after a stop, so its seconds_train times only "
                             "its last part; train it again to plan equal seconds from it")
    return summary, cur, one_per_stage


def _curriculum(like: Curriculum, mode: str, epochs: int, iterations_per_epoch: int) -> Curriculum:
    return Curriculum(like.final_patch, like.steps, epochs=epochs,
                      iterations_per_epoch=iterations_per_epoch, batch=like.final_batch,
                      mode=mode, rules=like.rules, min_size=like.min_size,
                      max_voxels_per_step=like.max_voxels_per_step, seed=like.seed)
