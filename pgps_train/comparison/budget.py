"""Equal-seconds budgets (`pgps-compare run --budget seconds`): plan a mode's run length so
its whole schedule, with the learning rate falling to 0, fits constant's measured time.

A run is never cut short: its length (epochs, or iterations per epoch when there is one
epoch per stage) is chosen before it starts, from a per-step time for every stage of its
schedule. That time is *measured* where the comparison already trained the same mode at
equal iterations (its summary's ``seconds_per_step`` for the same patch and batch), and
otherwise *modelled* from constant's step time scaled by the voxels per step (what a CPU
pays; a GPU pays relatively more for small steps, so a modelled plan can overrun there).
Constant's startup overhead (loader start, the first steps) is added to every plan. The
report prints the planned and the measured seconds, so a miss is visible, not hidden.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pgps_data import Curriculum
from pgps_data.errors import PGPSInputError


def stage_step_seconds(summary: Mapping[str, Any]) -> dict[tuple[tuple[int, ...], int], float]:
    """{(patch, batch): seconds per step} of a finished run's summary.json stages."""
    return {(tuple(st["patch"]), int(st["batch"])): float(st["seconds_per_step"])
            for st in summary.get("stages") or [] if st.get("steps")}


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
    overhead = max(0.0, target - t_c * cur_c.total_iterations)
    measured: dict[tuple[tuple[int, ...], int], float] = {}
    if reference_run is not None and (reference_run / "summary.json").is_file():
        measured = stage_step_seconds(_finished(reference_run)[0])
    per_voxel = t_c / (batch_c * math.prod(patch_c))

    def predicted(cur: Curriculum) -> tuple[float, bool]:
        total, modelled = overhead, False
        for st in cur.stages:
            t = measured.get((tuple(st.patch), st.batch))
            if t is None:
                t, modelled = per_voxel * st.batch * st.voxels, True
            total += t * st.iterations
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
    if summary.get("resumed_at_step"):
        raise PGPSInputError(f"{run}: was resumed after a stop, so its seconds_train times only "
                             "its last part; train it again to plan equal seconds from it")
    return summary, cur, one_per_stage


def _curriculum(like: Curriculum, mode: str, epochs: int, iterations_per_epoch: int) -> Curriculum:
    return Curriculum(like.final_patch, like.steps, epochs=epochs,
                      iterations_per_epoch=iterations_per_epoch, batch=like.final_batch,
                      mode=mode, rules=like.rules, min_size=like.min_size,
                      max_voxels_per_step=like.max_voxels_per_step, seed=like.seed)
