"""What a run records: per-step losses, per-eval rows (CSV + TensorBoard), a progress bar.

``steps.csv`` holds every step's loss (the resume test compares it bit for bit; it is
line-buffered, so a reader sees each step as it ends); ``log.csv`` one row per evaluation:
step, stage, patch, batch, loss, pseudo-Dice, lr, then this process's seconds so far
computing, waiting for data, validating, writing checkpoints and starting the loaders. A
resumed run first drops the rows written after its checkpoint, so both files read as one
uninterrupted run. The summary's ``stages`` aggregates each stage this process ran: steps,
seconds computing and waiting, mean step time, data-wait share and (on CUDA) the peak of
``torch.cuda.max_memory_allocated`` during the stage. Device-side augmentation is timed
apart from compute (``seconds_augment``, per stage and in total). From a remote store a
stage also says ``remote_requests`` and ``remote_bytes``: what the loaders fetched for it
(range requests and bytes; on a data-parallel job every rank's, summed with the delivered
crops; the eval lines print rank 0's so far).

What `pgps-compare` reads (run_records): ``seconds_train``, the loop's wall time less
validation (and its start-up) and checkpoint writes, i.e. ``seconds_wall −
seconds_validation − seconds_validation_startup − seconds_checkpoint`` (loader start-up
and augmentation stay in: training needs them); ``curve``, one [seconds_train, mean
pseudo-Dice over the foreground classes] per log.csv row; ``voxels`` (batch × patch voxels
trained on, also per stage); ``peak_memory_bytes`` / ``peak_memory_kind``; per stage the
delivered ``foreground`` fraction of each class. log.csv's last column ``seconds_wall`` is
the wall time at the row. Every checkpoint carries the run log's totals (:meth:`RunLog.
state_dict`), so a run resumed after a kill or a stop reports the whole run: its timings
are those of the steps that were kept (steps redone after the kill count once, the time
lost between the checkpoint and the kill not at all; the new process's loader start-up
is added), and its stages, voxels, curve and foreground cover every step. Its summary
says ``resumed_at_step`` and ``totals: "whole run"``. A checkpoint written before this
carried no run-log state: such a resumed run says ``foreground_partial: true`` and
``totals: "since resume"``, and its figures hold only the steps it ran itself.

Timing is honest: "wait" is only the time a training step waited for its batch. The first
batch of a process (starting the workers) is ``seconds_loader_startup``; validation,
checkpoint writes and each validation pass's wait for its first batch (its workers start
per pass) have their own columns (:class:`Timers`), so a mode with more stage-end
checkpoints or validations is not charged for them as data wait. The progress bar, the
schedule table and the evaluation lines go to stderr (``progress_console``).
"""

from __future__ import annotations

import csv
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pgps_data.console import progress_console
from pgps_data.labels import Labels
from pgps_data.schedule.curriculum import Curriculum, Stage
from pgps_train.run_records import DeliveredCrops, mean_dice, peak_memory

# Phases timed apart from compute and data wait (summary.json: seconds_<name>)
PHASES = ("augment", "validation", "validation_startup", "checkpoint", "loader_startup")
EVAL_FIELDS = ["step", "stage", "patch", "batch", "loss", "pseudo_dice", "lr",
               "seconds_compute", "seconds_wait", *(f"seconds_{p}" for p in PHASES),
               "seconds_wall"]  # last: a resumed run keeps older rows, which lack it
# Phases that are not training: seconds_train is the wall time less these
NOT_TRAINING = ("validation", "validation_startup", "checkpoint")


class Timers:
    """Seconds spent per named phase (validation, checkpoints, loader start-up)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)


class RunLog:
    """Files and progress of one run in ``out``."""

    def __init__(self, out: Path, cur: Curriculum, *, resume_from: int = 0,
                 quiet: bool = False, log=print,  # noqa: ANN001
                 device: torch.device | str = "cpu", labels: Labels | None = None,
                 write: bool = True):
        """``write=False``: a data-parallel follower's log, counting like rank 0's but
        writing no file and printing nothing (rank 0 owns the run folder)."""
        self.out = out
        quiet = quiet or not write
        self.resumed_from = resume_from
        self.labels = labels  # None: no delivered-foreground fractions
        self.crops = DeliveredCrops()
        self.curve: list[list[float | None]] = []
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.restored = False  # totals restored from a checkpoint (load_state_dict)
        self.stages: dict[int, dict[str, Any]] = {}
        self._step_seconds: dict[int, list[float]] = {}  # per stage, every step's seconds
        self._stage: int | None = None
        self.cur = cur
        self.quiet = quiet
        self.log = log
        self.t0 = time.perf_counter()
        self.last_eval: dict[str, Any] | None = None
        self.timers = Timers()
        self._steps = _open_csv(out / "steps.csv" if write else None,
                                ["step", "stage", "loss"], resume_from)
        self._evals = _open_csv(out / "log.csv" if write else None, EVAL_FIELDS, resume_from)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            if write:
                self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=resume_from or None)
        except ImportError:  # tensorboard is a dependency; keep running without it anyway
            self.tb = None
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("loss {task.fields[loss]}"),
            console=progress_console(), disable=quiet, transient=False,
        )
        self.task = self.progress.add_task("training", total=cur.total_iterations,
                                           completed=resume_from, loss="-")
        self.progress.start()

    def state_dict(self, t_compute: float, t_wait: float) -> dict[str, Any]:
        """The totals so far, for a checkpoint (plain containers: weights_only loads them):
        wall seconds, phase timers, per-stage records and step times, voxels and label
        histograms, the pseudo-Dice curve, and the loop's compute and wait seconds."""
        return {"wall": self.seconds()[0], "timers": dict(self.timers.seconds),
                "stages": {k: dict(v) for k, v in self.stages.items()},
                # a tensor: a long run's checkpoint digests it as bytes, not float by float
                "step_seconds": {k: torch.tensor(v, dtype=torch.float64)
                                 for k, v in self._step_seconds.items()},
                "crops": self.crops.state_dict(),
                "curve": [list(c) for c in self.curve], "last_eval": self.last_eval,
                "t_compute": t_compute, "t_wait": t_wait}

    def load_state_dict(self, state: dict[str, Any]) -> tuple[float, float]:
        """Continue the totals of :meth:`state_dict`; returns (t_compute, t_wait)."""
        self.t0 = time.perf_counter() - float(state["wall"])
        self.timers.seconds.update(state["timers"])
        self.stages = {int(k): dict(v) for k, v in state["stages"].items()}
        self._step_seconds = {int(k): torch.as_tensor(v).tolist()
                              for k, v in state["step_seconds"].items()}
        self.crops.load_state_dict(state["crops"], self.device)
        for k, st in self.stages.items():  # checkpoints that kept fetches with the timings
            if "remote_requests" in st:
                self.crops.fetched.setdefault(k, [st.pop("remote_requests"),
                                                  st.pop("remote_bytes", 0)])
        self.curve = [list(c) for c in state["curve"]]
        self.last_eval = state["last_eval"]
        self.restored = True
        return float(state["t_compute"]), float(state["t_wait"])

    def schedule(self, cur: Curriculum) -> None:
        """Print the schedule before training starts."""
        if not self.quiet:
            from pgps_data.schedule.report import print_table

            print_table(cur, console=self.progress.console)

    def delivered(self, stage: Stage, image: torch.Tensor, label: torch.Tensor) -> None:
        """The step's input and label values as the loss gets them (after augmentation):
        voxels and the label histogram, counted on their device (no host sync)."""
        self.crops.add(stage.index, image, label)

    def seconds(self) -> tuple[float, float]:
        """(wall, train) seconds since the log opened; train = wall less NOT_TRAINING."""
        wall = time.perf_counter() - self.t0
        return wall, wall - sum(self.timers.seconds[p] for p in NOT_TRAINING)

    def step(self, step: int, stage: Stage, loss: float, compute: float = 0.0,
             wait: float = 0.0, augment: float = 0.0, fetched: tuple[int, int] = (0, 0)
             ) -> None:
        """Record one step: its loss, and its seconds computing, waiting for data and
        augmenting on the device (apart from compute), and the (requests, bytes) its
        batch's reads fetched from a remote store (the batch's ``fetched``)."""
        self._steps[1].writerow([step, stage.index, repr(loss)])
        self._stage_stats(stage, compute, wait, augment)
        self.crops.add_fetched(stage.index, *fetched)
        self.timers.add("augment", augment)
        desc = (f"stage {stage.index + 1}/{len(self.cur.stages)} "
                f"{'×'.join(map(str, stage.patch))} b={stage.batch}")
        self.progress.update(self.task, advance=1, description=desc, loss=f"{loss:.4f}")
        if self.tb is not None:
            self.tb.add_scalar("train/loss", loss, step)

    def eval_row(self, step: int, stage: Stage, loss: float, dice: list[float], lr: float,
                 t_compute: float, t_wait: float) -> None:
        wall, train = self.seconds()
        self.curve.append([round(train, 3), mean_dice(dice)])
        row = {"step": step, "stage": stage.index, "patch": "x".join(map(str, stage.patch)),
               "batch": stage.batch, "loss": round(loss, 5),
               "pseudo_dice": " ".join(f"{d:.4f}" for d in dice), "lr": f"{lr:.3e}",
               "seconds_compute": round(t_compute, 2), "seconds_wait": round(t_wait, 2),
               **{f"seconds_{p}": round(v, 2) for p, v in self.timers.seconds.items()},
               "seconds_wall": round(wall, 3)}
        self._evals[1].writerow([row[k] for k in EVAL_FIELDS])
        self._evals[0].flush()
        self._steps[0].flush()
        self.last_eval = {**row, "pseudo_dice": dice}
        if self.tb is not None:
            for k, d in enumerate(dice, start=1):
                self.tb.add_scalar(f"val/pseudo_dice_{k}", d, step)
            self.tb.add_scalar("train/lr", lr, step)
        if not self.quiet:
            got = self.crops.fetched.get(stage.index)
            fetched = (f"  fetched {got[1] / 2**20:.1f} MiB in {got[0]} requests this stage"
                       if got else "")
            self.progress.console.print(
                f"step {step + 1:>6}  stage {stage.index}  patch {row['patch']:>11}  "
                f"b {stage.batch:>3}  loss {loss:.4f}  pseudo-Dice {row['pseudo_dice']}  "
                f"lr {row['lr']}  compute {t_compute:.1f}s  wait {t_wait:.1f}s{fetched}"
            )

    def enter(self, stage: Stage) -> None:
        """Called before each step's compute: a new stage starts a new CUDA memory peak."""
        if stage.index != self._stage:
            self._close_stage()
            self._stage = stage.index
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()

    def _stage_stats(self, stage: Stage, compute: float, wait: float, augment: float) -> None:
        self.enter(stage)
        st = self.stages.setdefault(stage.index, {
            "patch": list(stage.patch), "batch": stage.batch, "steps": 0,
            "seconds_compute": 0.0, "seconds_wait": 0.0, "seconds_augment": 0.0})
        self._step_seconds.setdefault(stage.index, []).append(compute + wait + augment)
        st["steps"] += 1
        st["seconds_compute"] += compute
        st["seconds_wait"] += wait
        st["seconds_augment"] += augment

    def _close_stage(self) -> None:
        """Fold the CUDA peak since the stage began into its record (random mode revisits)."""
        if self._stage is not None and self.cuda:
            st = self.stages[self._stage]
            st["peak_memory_bytes"] = max(torch.cuda.max_memory_allocated(),
                                          st.get("peak_memory_bytes", 0))

    def stage_summary(self) -> list[dict[str, Any]]:
        """Per stage: steps, seconds, mean and median step time, data-wait share, CUDA peak
        memory. The median is the steady step time: the mean less the stage's start (new
        shapes, a loader refilling) spread over its steps, which the equal-seconds planner
        needs apart."""
        rows = []
        for k, st in sorted(self.stages.items()):
            total = st["seconds_compute"] + st["seconds_wait"] + st["seconds_augment"]
            records: dict[str, Any] = {"voxels": self.crops.voxels.get(k, 0)}
            if k in self.crops.fetched:
                records["remote_requests"], records["remote_bytes"] = self.crops.fetched[k]
            if self.labels is not None:
                records["foreground"] = self.crops.fractions(k, self.labels)
            rows.append({"stage": k, **st, **records,
                         "seconds_compute": round(st["seconds_compute"], 3),
                         "seconds_wait": round(st["seconds_wait"], 3),
                         "seconds_augment": round(st["seconds_augment"], 3),
                         "seconds_per_step": round(total / max(st["steps"], 1), 5),
                         "seconds_per_step_median": round(
                             statistics.median(self._step_seconds.get(k) or [0.0]), 5),
                         "wait_share": round(st["seconds_wait"] / max(total, 1e-9), 4),
                         "augment_share": round(st["seconds_augment"] / max(total, 1e-9), 4)})
        return rows

    def flush(self) -> None:
        """Put every row so far on disk (called with each checkpoint)."""
        for fh, _ in (self._steps, self._evals):
            fh.flush()

    def close(self) -> None:
        """Stop the progress bar and close the files (also when a run stops early)."""
        self.progress.stop()
        for fh, _ in (self._steps, self._evals):
            if not fh.closed:
                fh.close()
        if self.tb is not None:
            self.tb.close()

    def finish(self, t_compute: float, t_wait: float) -> dict[str, Any]:
        self._close_stage()
        self._stage = None
        self.close()
        wall, train = self.seconds()
        stages = self.stage_summary()
        resumed = {}
        if self.resumed_from:
            resumed = ({"resumed_at_step": self.resumed_from, "totals": "whole run"}
                       if self.restored else
                       {"resumed_at_step": self.resumed_from, "totals": "since resume",
                        "foreground_partial": True})
        return {
            "seconds_wall": round(wall, 2),
            "seconds_train": round(train, 3),
            "seconds_compute": round(t_compute, 2),
            "seconds_wait": round(t_wait, 2),
            **{f"seconds_{p}": round(v, 3) for p, v in self.timers.seconds.items()},
            "wait_share": round(t_wait / max(t_compute + t_wait + self.timers.seconds["augment"],
                                             1e-9), 4),
            "iterations": self.cur.total_iterations,
            "compute_share_vs_constant": round(self.cur.compute_share(), 4),
            "last_eval": self.last_eval,
            "voxels": sum(st["voxels"] for st in stages),
            **peak_memory(self.cuda, [st.get("peak_memory_bytes", 0) for st in stages]),
            "curve": self.curve,
            **resumed,
            "stages": stages,
        }


def _open_csv(path: Path | None, header: list[str], resume_from: int):  # noqa: ANN202
    """Open ``path`` for appending, keeping only rows of steps before ``resume_from``
    (None: the null device, for a log that writes nothing)."""
    if path is None:
        fh = open(os.devnull, "w")  # noqa: SIM115 - closed in close()
        return fh, csv.writer(fh)
    rows: list[list[str]] = []
    if resume_from and path.exists():
        with open(path, newline="") as fh:
            rows = [r for r in list(csv.reader(fh))[1:] if r and int(r[0]) < resume_from]
    fh = open(path, "w", newline="", buffering=1)  # noqa: SIM115 - closed in finish()
    writer = csv.writer(fh)
    writer.writerow(header)
    writer.writerows(rows)
    return fh, writer
