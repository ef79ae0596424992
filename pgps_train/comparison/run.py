"""`pgps-compare run`: every mode × seed trained alike, scored on the same held-out cases,
the papers' claims tested and reported.

Each run is an ordinary `pgps-train` run in ``OUT/runs/<mode>-seed<k>/`` (same store,
network, preset, fold and iteration budget; only mode and seed differ), so every run can be
inspected, predicted with or compared on its own. With ``--budget seconds`` the other
modes' runs go to ``OUT/runs/<mode>-seconds-seed<k>/``, each planned (:mod:`.budget`) to
fit the constant run of its seed, which both budgets share; that report goes to
``OUT/equal-seconds/``. Runs go one after another: timed runs
must not share the machine. A finished run (its summary.json) is skipped and a killed one
resumed from its checkpoint, so a killed comparison continues where it stopped.

The held-out cases are the fold's validation cases, the same for every run: each run's
final evaluation scores them in the source geometry (Dice, lesion-wise F1, surface Dice),
and the statistics pair runs by case. ``OUT/report.{html,md,json}`` and the plots come
from :mod:`.report`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgps_data.errors import PGPSInputError
from pgps_data.store.remote import local_path
from pgps_train.checkpoint import LATEST
from pgps_train.comparison import statistics
from pgps_train.comparison.budget import plan_length
from pgps_train.comparison.report import write_report
from pgps_train.comparison.result import write_atomic
from pgps_train.run_dir import is_run_folder
from pgps_train.runlog import NOT_TRAINING

DEFAULT_MODES = ("constant", "efficiency", "performance")
BUDGETS = ("iterations", "seconds")
SECONDS_DIR = "equal-seconds"  # the --budget seconds report, inside OUT
LESION_WORDS = ("lesion", "tumour", "tumor", "metasta", "nodule", "enhancing")


@dataclass
class ComparePlan:
    """What `pgps-compare run` trains: ``modes`` × ``seeds`` on ``store``, into ``out``.

    ``train_args`` are extra pgps-train flags for every run; ``lesion_classes`` (default:
    classes whose name says lesion, tumour, metastasis, nodule or enhancing) are the ones
    the lesion claims are tested on.
    """

    store: str
    out: str
    modes: Sequence[str] = DEFAULT_MODES
    seeds: Sequence[int] = (0, 1, 2)
    net: str = "unet"
    preset: str | None = "tiny"
    device: str = "cpu"
    fold: str = "0"
    train_args: Sequence[str] = ()
    lesion_classes: Sequence[str] | None = None
    budget: str = "iterations"  # or "seconds": every mode fits its seed's constant time
    command: str = ""
    overrides: Mapping[str, Any] = field(default_factory=dict)  # TrainConfig fields (API use)


def run_folder(plan: ComparePlan, mode: str, seed: int, budget: str | None = None) -> Path:
    """``OUT/runs/<mode>[-seconds]-seed<k>``: constant's run is the same for both budgets."""
    timed = (budget or plan.budget) == "seconds" and mode != "constant"
    return Path(plan.out) / "runs" / f"{mode}{'-seconds' if timed else ''}-seed{seed}"


def report_folder(plan: ComparePlan) -> Path:
    return Path(plan.out) / SECONDS_DIR if plan.budget == "seconds" else Path(plan.out)


def train_all(plan: ComparePlan, *, log: Callable[..., None] = print) -> list[Path]:
    """Train the runs not finished yet, constant first for every seed; their folders."""
    from pgps_train.cli.train import build_parser, config_from_args, resume_config
    from pgps_train.run_config import saved_config
    from pgps_train.trainer import train

    modes = sorted(plan.modes, key=lambda m: m != "constant")  # the baseline first
    folders = []
    for seed in plan.seeds:
        for mode in modes:
            out = run_folder(plan, mode, seed)
            folders.append(out)
            cli = [plan.store, "--out", str(out), "--mode", mode, "--seed", str(seed),
                   "--net", plan.net, "--fold", str(plan.fold), "--device", plan.device,
                   *(["--preset", plan.preset] if plan.preset else []), *plan.train_args]
            args = build_parser().parse_args(cli)
            if (out / "summary.json").is_file():
                _check_same(out, _overridden(config_from_args(args), plan), plan, mode)
                log(f"pgps-compare: {mode} seed {seed}: finished, skipped ({out})")
                continue
            resume = is_run_folder(out) and (out / LATEST).is_file()
            started = is_run_folder(out) and not resume  # ours, killed before a checkpoint
            cfg = _overridden(resume_config(args, saved_config(out)) if resume
                              else config_from_args(args), plan)
            if plan.budget == "seconds" and mode != "constant" and not resume:
                length = plan_length(run_folder(plan, "constant", seed), mode,
                                     reference_run=run_folder(plan, mode, seed, "iterations"))
                cfg = dataclasses.replace(cfg, epochs=length["epochs"],
                                          iterations_per_epoch=length["iterations_per_epoch"])
                _record_plan(plan, out.name, length)
                log(f"pgps-compare: {mode} seed {seed}: {length['iterations']} iterations "
                    f"planned to fit constant's {length['target_seconds']:.0f} s "
                    f"({length['planned_seconds']:.0f} s predicted, step times "
                    f"{length['step_times']})")
            if started:
                _check_own(out, mode, seed)
            log(f"pgps-compare: {mode} seed {seed}: {'resuming' if resume else 'training'} "
                f"in {out}")
            train(cfg, resume=resume, overwrite=started, log=log)
    return folders


PLANS = "plans.json"  # --budget seconds: each run's planned length, in the report folder


def _record_plan(plan: ComparePlan, name: str, length: Mapping[str, Any]) -> None:
    path = report_folder(plan) / PLANS
    plans = json.loads(path.read_text()) if path.is_file() else {}
    plans[name] = dict(length)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(plans, indent=1) + "\n").encode())


def _overridden(cfg: Any, plan: ComparePlan) -> Any:
    """``cfg`` with the plan's TrainConfig overrides (API use) applied."""
    return dataclasses.replace(cfg, **plan.overrides) if plan.overrides else cfg


def _check_same(out: Path, cfg: Any, plan: ComparePlan, mode: str) -> None:
    """A finished run is reused only when it was trained as this comparison would train it
    (a changed preset, network or flag would otherwise mix two comparisons in one table);
    an equal-seconds run's length is its plan's, so it is not compared."""
    from pgps_train.run_config import differences, flag_name, saved_config

    config = dataclasses.asdict(cfg)
    if plan.budget == "seconds" and mode != "constant":
        config = {k: v for k, v in config.items() if k not in ("epochs", "iterations_per_epoch")}
    saved = saved_config(out) or {}
    diff = differences(config, saved)
    if diff:
        key = diff[0]
        raise PGPSInputError(
            f"{out / 'config.json'}: this finished run has {flag_name(key)} {saved[key]}, the "
            f"comparison asks for {config[key]}; give another --out (or move the run away) to "
            "compare other settings")


def _check_own(out: Path, mode: str, seed: int) -> None:
    """A run folder without a checkpoint is restarted only when it is this comparison's."""
    config = json.loads((out / "config.json").read_text())
    if config.get("mode") != mode or int(config.get("seed", -1)) != seed:
        raise PGPSInputError(f"{out}: holds a {config.get('mode')} seed {config.get('seed')} "
                             f"run, not {mode} seed {seed}; move it away or choose another --out")


def collect(plan: ComparePlan, folders: Sequence[Path]) -> dict[str, Any]:
    """The report's result dict (the contract in :mod:`.result`) from finished runs."""
    runs = [run_record(folder) for folder in folders]
    plans_path = report_folder(plan) / PLANS
    plans = json.loads(plans_path.read_text()) if plans_path.is_file() else {}
    for run, folder in zip(runs, folders):
        if folder.name in plans:  # --budget seconds: what the plan predicted, beside the run
            run["planned_seconds"] = plans[folder.name]["planned_seconds"]
            run["step_times"] = plans[folder.name]["step_times"]
    classes = list(dict.fromkeys(c for r in runs for scores in r["dice"].values()
                                 for c in scores))  # the label order of the runs' scores
    if not classes:
        raise PGPSInputError(f"{plan.out}: the runs have no final evaluation (train without "
                             "--no-final-eval, on a fold with validation cases)")
    lesions = list(plan.lesion_classes) if plan.lesion_classes is not None else [
        c for c in classes if any(word in c.lower() for word in LESION_WORDS)]
    unknown = [c for c in lesions if c not in classes]
    if unknown:
        raise PGPSInputError(f"--lesion-classes {' '.join(unknown)}: not among the classes "
                             f"{', '.join(classes)}")
    stats_runs = [{k: r[k] for k in ("mode", "seed", "dice", "curve")} for r in runs]
    baseline = "constant" if any(r["mode"] == "constant" for r in runs) else runs[0]["mode"]
    stats = {"mode_table": statistics.mode_table(stats_runs, classes),
             "paired_tests": statistics.paired_tests(stats_runs, classes, baseline=baseline),
             "seed_spread": statistics.seed_spread(stats_runs, classes),
             "reach_times": statistics.reach_times(stats_runs, baseline=baseline)}
    config = json.loads((folders[0] / "config.json").read_text()) if folders else {}
    budget = "equal seconds" if plan.budget == "seconds" else "equal iterations"
    return {"title": f"PGPS comparison on {Path(plan.store).name} ({budget})",
            "store": plan.store,
            "preset": plan.preset or "none", "net": plan.net, "budget": plan.budget,
            "device": plan.device, "machine": _machine(), "command": plan.command,
            "classes": classes, "lesion_classes": lesions, "runs": runs,
            "statistics": stats, "iterations": config.get("iterations")}


def run_record(folder: Path) -> dict[str, Any]:
    """One finished run as the report reads it (older runs: the fields they lack derived)."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise PGPSInputError(f"{folder}: not a finished pgps-train run ({exc})") from None
    final = summary.get("final") or {}
    stages = summary.get("stages") or []
    schedule, start = [], 0
    for st in stages:
        schedule.append({"iteration": start, "patch": list(st["patch"]), "batch": st["batch"]})
        start += int(st.get("steps", 0))
    voxels = summary.get("voxels")
    if voxels is None:
        voxels = sum(int(st.get("steps", 0)) * st["batch"] * math.prod(st["patch"])
                     for st in stages)
    seconds_train = summary.get("seconds_train")
    if seconds_train is None:
        seconds_train = summary["seconds_wall"] - sum(summary.get(f"seconds_{phase}", 0.0)
                                                      for phase in NOT_TRAINING)
    return {"mode": config["mode"], "seed": int(config["seed"]), "dir": str(folder),
            "seconds_train": float(seconds_train),
            "seconds_compute": float(summary.get("seconds_compute", 0.0)),
            "seconds_augment": float(summary.get("seconds_augment", 0.0)),
            "seconds_wait": float(summary.get("seconds_wait", 0.0)),
            "iterations": int(summary.get("iterations", start)), "voxels": int(voxels),
            "peak_memory_bytes": summary.get("peak_memory_bytes"),
            # a run resumed after a kill: its totals cover the whole run ("whole run"), or
            # only its last part ("since resume": a checkpoint written before they were kept)
            "resumed_at_step": summary.get("resumed_at_step"),
            "totals": summary.get("totals", "whole run"),
            "dice": final.get("per_case", {}), "lesion_f1": final.get("lesion_f1", {}),
            "nsd": final.get("nsd", {}),
            "curve": summary.get("curve") or _curve_from_log(folder / "log.csv"),
            "schedule": schedule,
            "foreground": [{"stage": st["stage"], "patch": list(st["patch"]),
                            "fraction": st["foreground"]} for st in stages if "foreground" in st]}


def _curve_from_log(path: Path) -> list[list[float]]:
    """[[training seconds, mean pseudo-Dice]] of the validation rows of a run's log.csv."""
    if not path.is_file():
        return []
    curve = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            values = [float(v) for v in (row.get("pseudo_dice") or "").split()]
            if not values:
                continue
            seconds = sum(float(row.get(k) or 0.0) for k in
                          ("seconds_compute", "seconds_wait", "seconds_augment",
                           "seconds_loader_startup"))
            curve.append([seconds, sum(values) / len(values)])
    curve.sort(key=lambda point: point[0])
    return curve


def _machine() -> str:
    import os
    import platform

    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
            f"torch {torch.__version__}" +
            (f"; {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))


REPORT_FILES = ("report.html", "report.md", "report.json", "schedule.png", "dice_vs_time.png",
                "foreground.png", "final_dice.png")


def check_out(out: Path) -> None:
    """Refuse an ``--out`` whose report files were not written by pgps-compare (they would
    be replaced): ours always include a report.json holding the claims."""
    present = [name for name in REPORT_FILES if (out / name).exists()]
    if not present:
        return
    try:
        ours = "claims" in json.loads((out / "report.json").read_text())
    except (OSError, ValueError, TypeError):
        ours = False
    if not ours:
        raise PGPSInputError(f"{out}: holds {', '.join(present[:3])} that pgps-compare did not "
                             "write; choose another --out (nothing was changed)")


def compare(plan: ComparePlan, *, log: Callable[..., None] = print) -> dict[str, Path]:
    """Train what is missing, collect, test the claims, write the report; its paths."""
    out, local = Path(plan.out).resolve(), local_path(plan.store)  # None: a remote store
    store = None if local is None else local.resolve()
    if store is not None and (out == store or store in out.parents):
        raise PGPSInputError(f"{plan.out}: is inside the store {plan.store}; choose an --out "
                             "outside it (nothing was written)")
    if plan.budget not in BUDGETS:
        raise PGPSInputError(f"--budget {plan.budget}: use one of {', '.join(BUDGETS)}")
    if plan.budget == "seconds" and "constant" not in plan.modes:
        raise PGPSInputError("--budget seconds plans every mode from constant's measured time: "
                             "include constant in --modes")
    check_out(report_folder(plan))
    folders = train_all(plan, log=log)
    return write_report(collect(plan, folders), report_folder(plan))
