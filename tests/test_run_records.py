"""What a finished run records for `pgps-compare`: train seconds, curve, voxels, memory,
the delivered foreground per stage (pgps_train/run_records, runlog).

Tiny in-process CPU runs on the session store (unet at tiny widths, patch 8×16×16). The
loader's batches and the targets the loss gets are captured by wrapping ``make_loader``
and the objective's ``loss``, so every recorded number is checked against a count made
here, independently of the trainer's own bookkeeping.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import pgps_train.trainer as trainer_mod
from pgps_data import Curriculum
from pgps_data.labels import Labels
from pgps_train.networks import tiny_kwargs
from pgps_train.run_records import BINS, DeliveredCrops, scatter_counts_into, value_counts_into
from pgps_train.trainer import TrainConfig, train
from tests.torch_threads import one_thread

PATCH = [8, 16, 16]
NAMES = {1: "organ", 2: "lesion"}  # the tiny store's foreground values


def _cfg(store: Path, out: Path, **kw: Any) -> TrainConfig:
    base = dict(store=str(store), out=str(out), mode="efficiency", patch=PATCH, epochs=0,
                iterations_per_epoch=2, batch=2, workers=1, eval_every=3, eval_batches=1,
                save_every=10**9, device="cpu", fold="all", final_eval=False, quiet=True,
                augment="none", net_kwargs=tiny_kwargs("unet"))
    return TrainConfig(**{**base, **kw})


def _run(cfg: TrainConfig, *, resume: bool = False) -> tuple[dict[str, Any], dict[str, list]]:
    """Train ``cfg``; returns the summary and what was captured: the training batches'
    (step, image shape, label values) and each loss call's target (class indices)."""
    seen: dict[str, list] = {"batches": [], "targets": []}
    real_loader, real_objective = trainer_mod.make_loader, trainer_mod.objective_for

    class Loader:  # the trainer also needs close() and state_dict()
        def __init__(self, store, cur, **kw):  # noqa: ANN001
            self.inner = real_loader(store, cur, **kw)

        def __iter__(self):  # noqa: ANN204
            for batch in self.inner:  # copied: the CPU augmenter mirrors it in place
                seen["batches"].append((int(batch["step"]), tuple(batch["image"].shape),
                                        batch["label"].clone()))
                yield batch

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    def objective(labels):  # noqa: ANN001, ANN202
        obj = real_objective(labels)
        loss = obj.loss

        def spy(outputs, target, *reduce):  # noqa: ANN001, ANN002, ANN202
            seen["targets"].append(target.detach().clone())
            return loss(outputs, target, *reduce)

        obj.loss = spy
        return obj

    with pytest.MonkeyPatch.context() as mp, one_thread(), \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        mp.setattr(trainer_mod, "make_loader", Loader)
        mp.setattr(trainer_mod, "objective_for", objective)
        summary = train(cfg, resume=resume, log=lambda *a, **k: None)
    return summary, seen


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _curriculum(out: Path) -> Curriculum:
    return Curriculum.from_dict(json.loads((out / "curriculum.json").read_text()))


def _fractions(counts: np.ndarray) -> dict[str, float]:
    """Independent count: each foreground value's share of all label voxels (no ignore)."""
    return {name: int(counts[v]) / int(counts.sum()) for v, name in NAMES.items()}


@pytest.fixture(scope="module")
def plain(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Efficiency, 10 stages × 2 steps, eval every 3 steps, augmentation off."""
    out = tmp_path_factory.mktemp("records") / "run"
    summary, seen = _run(_cfg(tiny_store, out))
    return {"out": out, "summary": summary, "seen": seen,
            "on_disk": json.loads((out / "summary.json").read_text())}


# -- seconds and the curve --------------------------------------------------------------------
def test_seconds_train_is_the_wall_time_less_validation_and_checkpoints(plain) -> None:
    s = plain["on_disk"]
    assert 0 < s["seconds_train"] <= s["seconds_wall"]
    expected = (s["seconds_wall"] - s["seconds_validation"] - s["seconds_validation_startup"]
                - s["seconds_checkpoint"])
    assert s["seconds_train"] == pytest.approx(expected, abs=0.02)  # the summary's roundings
    assert s["seconds_train"] >= s["seconds_compute"] - 0.01
    assert "resumed_at_step" not in s and "foreground_partial" not in s


def test_curve_has_one_point_per_validation_row(plain) -> None:
    s, rows = plain["on_disk"], _rows(plain["out"] / "log.csv")
    assert [int(r["step"]) for r in rows] == [2, 5, 8, 11, 14, 17, 19]
    curve = s["curve"]
    assert len(curve) == len(rows)
    seconds = [t for t, _ in curve]
    assert seconds == sorted(seconds) and 0 < seconds[0] and seconds[-1] <= s["seconds_train"]
    for (_, value), row in zip(curve, rows, strict=True):
        dice = [d for d in map(float, row["pseudo_dice"].split()) if not math.isnan(d)]
        if dice:
            assert value == pytest.approx(sum(dice) / len(dice), abs=1e-4)
        else:
            assert value is None


def test_log_rows_carry_the_wall_time(plain) -> None:
    rows = _rows(plain["out"] / "log.csv")
    assert list(rows[0])[-1] == "seconds_wall"
    wall = [float(r["seconds_wall"]) for r in rows]
    assert all(a < b for a, b in zip(wall, wall[1:])), wall
    assert 0 < wall[0] and wall[-1] <= plain["on_disk"]["seconds_wall"]
    # every row's wall time covers at least its compute and validation so far
    for r in rows:
        assert float(r["seconds_wall"]) >= float(r["seconds_compute"]) + float(
            r["seconds_validation"]) - 0.02


# -- voxels and memory -----------------------------------------------------------------------
def test_voxels_are_batch_times_patch_over_the_schedule(plain) -> None:
    s, cur = plain["on_disk"], _curriculum(plain["out"])
    per_stage: dict[int, int] = {}
    for step in range(cur.total_iterations):
        stage = cur.stage_at(step)
        per_stage[stage.index] = per_stage.get(stage.index, 0) + stage.batch * math.prod(stage.patch)
    assert len(set(per_stage.values())) > 1  # the patch grows: a per-step constant would fail
    assert s["voxels"] == sum(per_stage.values())
    assert {st["stage"]: st["voxels"] for st in s["stages"]} == per_stage
    # and the batches the loader handed out (channels not multiplied)
    shapes = [shape for _, shape, _ in plain["seen"]["batches"]]
    assert s["voxels"] == sum(b * math.prod(rest) for b, _, *rest in shapes)


def test_peak_memory_is_the_process_peak_rss(plain) -> None:
    s = plain["on_disk"]
    assert s["peak_memory_kind"] == "cpu_max_rss"
    assert isinstance(s["peak_memory_bytes"], int) and s["peak_memory_bytes"] > 10 * 2**20


# -- the delivered foreground ----------------------------------------------------------------
def test_foreground_per_stage_equals_a_count_of_the_loader_batches(plain) -> None:
    s, cur = plain["on_disk"], _curriculum(plain["out"])
    counts: dict[int, np.ndarray] = {}
    for step, _, label in plain["seen"]["batches"]:
        k = cur.stage_at(step).index
        counts[k] = counts.get(k, 0) + np.bincount(label.numpy().ravel(), minlength=BINS)
    assert sorted(counts) == [st["stage"] for st in s["stages"]]
    organ_seen = False
    for st in s["stages"]:
        fg = st["foreground"]
        assert list(fg) == ["organ", "lesion"]
        # ≤ 1: at the smallest patches (2×4×4) both crops may lie wholly in the organ
        assert all(0 <= f <= 1 for f in fg.values()) and sum(fg.values()) <= 1
        assert fg == pytest.approx(_fractions(counts[st["stage"]]), rel=1e-12, abs=0)
        organ_seen |= fg["organ"] > 0
    assert organ_seen  # foreground-forced crops: an all-zero record would not pass
    assert sum(s["stages"][-1]["foreground"].values()) < 1  # the final patch holds background


def test_foreground_counts_the_augmented_targets_of_the_loss(tiny_store: Path,
                                                             tmp_path: Path) -> None:
    """With augmentation on, the fractions are those of the targets the loss received."""
    summary, seen = _run(_cfg(tiny_store, tmp_path / "aug", mode="constant", epochs=1,
                              iterations_per_epoch=6, eval_every=10**9, augment="nnunet"))
    assert len(seen["targets"]) == 6
    counts = sum(np.bincount(t.numpy().ravel(), minlength=3) for t in seen["targets"])
    fg = summary["stages"][0]["foreground"]
    assert fg == pytest.approx({"organ": counts[1] / counts.sum(),
                                "lesion": counts[2] / counts.sum()}, rel=1e-12, abs=0)
    assert summary["voxels"] == 6 * 2 * math.prod(PATCH)


def test_a_resumed_run_records_the_whole_run_and_says_so(tiny_store: Path,
                                                         tmp_path: Path) -> None:
    """The checkpoint carries the run log's totals: the resumed summary counts the step
    before the stop too, and its curve continues the first process's clock."""
    cfg = _cfg(tiny_store, tmp_path / "run", mode="constant", epochs=1, iterations_per_epoch=4,
               eval_every=1)
    first, seen_first = _run(replace(cfg, max_seconds=1e-9))
    assert first["stopped_at_step"] == 1
    summary, seen = _run(cfg, resume=True)
    assert summary["resumed_at_step"] == 1 and summary["totals"] == "whole run"
    assert "foreground_partial" not in summary
    assert len(seen_first["batches"]) == 1 and len(seen["batches"]) == 3
    assert summary["stages"][0]["steps"] == 4
    assert summary["voxels"] == 4 * 2 * math.prod(PATCH)
    batches = seen_first["batches"] + seen["batches"]
    counts = sum(np.bincount(lab.numpy().ravel(), minlength=BINS) for *_, lab in batches)
    assert summary["stages"][0]["foreground"] == pytest.approx(_fractions(counts), rel=1e-12)
    rows = _rows(tmp_path / "run" / "log.csv")
    # log.csv and the curve read as one run (steps 0..3), on one clock
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3] and len(summary["curve"]) == 4
    assert summary["curve"][0] == first["curve"][0]
    times = [t for t, _ in summary["curve"]]
    assert times == sorted(times) and summary["seconds_train"] >= times[-1]
    assert summary["seconds_compute"] > first["seconds_compute"]
    assert [float(r["seconds_wall"]) for r in rows] == sorted(
        float(r["seconds_wall"]) for r in rows)


def test_a_checkpoint_without_run_log_totals_resumes_with_its_own(tiny_store: Path,
                                                                  tmp_path: Path) -> None:
    """A checkpoint written before the totals were kept still resumes; its summary says
    that its figures cover only the steps since the resume."""
    from pgps_train.checkpoint import DIGEST_KEY, LATEST, load_checkpoint, save_checkpoint

    cfg = _cfg(tiny_store, tmp_path / "run", mode="constant", epochs=1, iterations_per_epoch=4,
               eval_every=1)
    _run(replace(cfg, max_seconds=1e-9))
    path = tmp_path / "run" / LATEST
    ckpt = load_checkpoint(path)
    ckpt.pop("runlog")
    save_checkpoint(path, {k: v for k, v in ckpt.items() if k != DIGEST_KEY})
    summary, seen = _run(cfg, resume=True)
    assert summary["resumed_at_step"] == 1 and summary["totals"] == "since resume"
    assert summary["foreground_partial"] is True
    assert summary["stages"][0]["steps"] == 3 and len(seen["batches"]) == 3
    assert summary["voxels"] == 3 * 2 * math.prod(PATCH)


# -- the counting itself ---------------------------------------------------------------------
def test_sync_free_histogram_equals_bincount() -> None:
    gen = torch.Generator().manual_seed(0)
    label = torch.randint(0, 256, (3, 1, 5, 7, 9), dtype=torch.uint8, generator=gen)
    label[0, 0, 0, 0, :3] = 255
    expected = torch.bincount(label.reshape(-1), minlength=BINS)
    a, b = torch.zeros(BINS, dtype=torch.int64), torch.zeros(BINS, dtype=torch.int64)
    scatter_counts_into(a, label.reshape(-1))
    value_counts_into(b, label.flip(-1))  # a non-contiguous view counts the same
    assert torch.equal(a, expected) and torch.equal(b, expected)
    scatter_counts_into(a, label.reshape(-1))  # accumulates
    assert torch.equal(a, 2 * expected)


def test_fractions_leave_out_the_ignore_label_and_unite_region_values() -> None:
    labels = Labels({"background": 0, "whole": [1, 2], "core": [2], "ignore": 3},
                    regions_class_order=[1, 2])
    label = torch.tensor([0] * 10 + [1] * 4 + [2] * 2 + [3] * 4, dtype=torch.uint8)
    crops = DeliveredCrops()
    crops.add(0, torch.zeros(2, 3, 4, 5, 1), label.view(2, 1, 2, 5, 1))
    assert crops.voxels == {0: 40}  # image (2, 3, 4, 5, 1): batch × patch voxels, channels not multiplied
    assert crops.fractions(0, labels) == {"whole": 6 / 16, "core": 2 / 16}
    assert crops.fractions(1, labels) is None
    only_ignore = DeliveredCrops()
    only_ignore.add(0, torch.zeros(1, 1, 2), torch.full((1, 1, 2), 3, dtype=torch.uint8))
    assert only_ignore.fractions(0, labels) == {"whole": None, "core": None}


def test_the_jobs_counts_sum_every_ranks_crops_and_fetches() -> None:
    """Under DDP the summary's voxels, foreground and remote fetches are the job's: each
    rank's, summed in one all-reduce (here two ranks, faked by an addition), stages with
    nothing fetched saying nothing; the checkpoint round-trips them."""
    image = torch.zeros(2, 1, 4, 4, 4)
    mine, theirs = DeliveredCrops(), DeliveredCrops()
    mine.add(0, image, torch.ones(2, 1, 4, 4, 4, dtype=torch.uint8))
    theirs.add(0, image, torch.full((2, 1, 4, 4, 4), 2, dtype=torch.uint8))
    mine.add(1, image, torch.ones(2, 1, 4, 4, 4, dtype=torch.uint8))
    mine.add_fetched(0, 3, 300)
    theirs.add_fetched(0, 5, 500)
    theirs.add_fetched(1, 0, 0)  # a batch served from the cache
    sent: list[torch.Tensor] = []
    theirs.summed(2, lambda t: sent.append(t) or t, "cpu")  # what the peer all-reduces
    job = mine.summed(2, lambda t: t + sent[0], "cpu")
    assert job.voxels == {0: 256, 1: 128}
    assert job.fetched == {0: [8, 800]}
    assert job._counts[0][1] == 128 and job._counts[0][2] == 128
    again = DeliveredCrops()
    again.load_state_dict(job.state_dict(), torch.device("cpu"))
    assert again.fetched == job.fetched and again.voxels == job.voxels
