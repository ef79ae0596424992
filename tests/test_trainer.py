"""The trainer end to end on the tiny session store: learning, logs, checkpoints, CLI errors.

Runs are in-process, single-threaded (the CPUs are shared) and tiny: the unet at tiny
widths, patch 8×16×16 (lattice step 2×4×4 at the store's spacing), a few dozen steps.
One efficiency run with a final evaluation (``eff_run``) serves the log, checkpoint,
fold and end-to-end tests; one constant run checks that the loss falls.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

import pgps_train.trainer as trainer_mod
from pgps_data import Curriculum, make_loader, open_store
from pgps_data.errors import PGPSInputError
from pgps_train import checkpoint as ckpt_mod
from pgps_train.checkpoint import (
    FINAL,
    LATEST,
    CheckpointWriteError,
    load_checkpoint,
    save_checkpoint,
)
from pgps_train.cli.train import main as train_main
from pgps_train.networks import tiny_kwargs
from pgps_train.trainer import TrainConfig, train
from tests.torch_threads import one_thread

PATCH = [8, 16, 16]

PLANS = Path(__file__).parent / "fixtures" / "nnunet" / "nnUNetPlans.json"


class SpyLoader:
    """Wraps a loader: records the case ids of every batch it hands out."""

    def __init__(self, inner: Any, seen: list[str]):
        self.inner, self.seen = inner, seen

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.inner:
            self.seen.extend(batch["case_ids"])
            yield batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def spied_train(cfg: TrainConfig) -> tuple[dict[str, Any], dict[str, Any], str]:
    """``train(cfg)`` recording loader case lists and batches; returns (summary, seen, output)."""
    seen: dict[str, Any] = {"train_batches": [], "val_batches": []}
    real_loader, real_val = trainer_mod.make_loader, trainer_mod.make_validation_loader

    def loader(store, cur, **kw):  # noqa: ANN001, ANN202
        seen["train_cases"] = list(kw["cases"])
        return SpyLoader(real_loader(store, cur, **kw), seen["train_batches"])

    def val_loader(store, cur, cases, **kw):  # noqa: ANN001, ANN202
        seen["val_cases"] = list(cases)
        return SpyLoader(real_val(store, cur, cases, **kw), seen["val_batches"])

    buf = io.StringIO()  # results (stdout) and progress, schedule, eval lines (stderr)
    with pytest.MonkeyPatch.context() as mp, one_thread(), contextlib.redirect_stdout(buf), \
            contextlib.redirect_stderr(buf):
        mp.setattr(trainer_mod, "make_loader", loader)
        mp.setattr(trainer_mod, "make_validation_loader", val_loader)
        summary = train(cfg, log=lambda *a, **k: print(*a, **k))
    return summary, seen, buf.getvalue()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def splits_file(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A splits_final.json for the 4 training cases: fold 0 validates on the last one."""
    ids = open_store(tiny_store).case_ids
    path = tmp_path_factory.mktemp("splits") / "splits_final.json"
    path.write_text(json.dumps([{"train": ids[:3], "val": ids[3:]},
                                {"train": ids[1:], "val": ids[:1]}]))
    return path


@pytest.fixture(scope="module")
def eff_run(tiny_store: Path, splits_file: Path,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Efficiency mode, 10 stages × 2 iterations, eval every 3, final evaluation on fold 0."""
    out = tmp_path_factory.mktemp("eff") / "run"
    cfg = TrainConfig(store=str(tiny_store), out=str(out), mode="efficiency", patch=PATCH,
                      epochs=0, iterations_per_epoch=2, batch=2, workers=1, eval_every=3,
                      eval_batches=2, save_every=10**9, device="cpu", fold=0,
                      splits=str(splits_file), net_kwargs=tiny_kwargs("unet"))
    summary, seen, output = spied_train(cfg)
    return {"cfg": cfg, "out": out, "summary": summary, "seen": seen, "output": output,
            "splits": json.loads(splits_file.read_text())}


def curriculum_of(out: Path) -> Curriculum:
    return Curriculum.from_dict(json.loads((out / "curriculum.json").read_text()))


# -- 1. learning ----------------------------------------------------------------------------
def test_loss_falls_in_a_few_steps(tiny_store: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(store=str(tiny_store), out=str(tmp_path / "run"), mode="constant",
                      patch=PATCH, epochs=1, iterations_per_epoch=30, batch=2, workers=1,
                      eval_every=10**9, eval_batches=1, save_every=10**9, device="cpu",
                      fold="all", final_eval=False, quiet=True, lr=3e-2,
                      net_kwargs=tiny_kwargs("unet"))
    summary, seen, _ = spied_train(cfg)
    losses = [float(r["loss"]) for r in read_csv(tmp_path / "run" / "steps.csv")]
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.9 * first, (first, last, losses)
    # --fold all trains and validates on every training case, never the test case
    ids = open_store(tiny_store).case_ids
    assert seen["train_cases"] == ids and seen["val_cases"] == ids
    assert set(seen["train_batches"]) <= set(ids)
    assert summary["iterations"] == 30 and "final" not in summary


# -- 4. what a run writes ----------------------------------------------------------------------
def test_run_files_and_log_rows(eff_run: dict[str, Any]) -> None:
    out, cfg = eff_run["out"], eff_run["cfg"]
    cur = curriculum_of(out)
    total = cur.total_iterations
    assert len(cur.stages) == 10 and total == 20  # 3 + 3 + 3 + 1 stages, 2 iterations each

    steps = read_csv(out / "steps.csv")
    assert [int(r["step"]) for r in steps] == list(range(total))
    assert [int(r["stage"]) for r in steps] == [cur.stage_at(s).index for s in range(total)]
    assert all(float(r["loss"]) == float(repr(float(r["loss"]))) for r in steps)

    rows = read_csv(out / "log.csv")
    assert list(rows[0]) == ["step", "stage", "patch", "batch", "loss", "pseudo_dice", "lr",
                             "seconds_compute", "seconds_wait", "seconds_augment",
                             "seconds_validation", "seconds_validation_startup", "seconds_checkpoint",
                             "seconds_loader_startup", "seconds_wall"]
    assert [int(r["step"]) for r in rows] == [2, 5, 8, 11, 14, 17, 19]
    lr0, prev_compute = cfg.lr, 0.0
    for r in rows:
        step = int(r["step"])
        stage = cur.stage_at(step)
        assert int(r["stage"]) == stage.index
        assert r["patch"] == "x".join(map(str, stage.patch))
        assert int(r["batch"]) == stage.batch
        assert math.isfinite(float(r["loss"]))
        dice = [float(d) for d in r["pseudo_dice"].split()]
        assert len(dice) == 2 and all(0 <= d <= 1 or math.isnan(d) for d in dice)
        # poly decay over the whole run, never reset at a stage change (lr after step+1 steps)
        expected = lr0 * (1 - (step + 1) / total) ** 0.9
        assert float(r["lr"]) == pytest.approx(expected, rel=2e-3, abs=1e-12), step
        assert float(r["seconds_compute"]) >= prev_compute > -1 and float(r["seconds_wait"]) >= 0
        prev_compute = float(r["seconds_compute"])
    assert float(rows[-1]["lr"]) == 0.0
    # the lr kept decaying across stages: it is not back at lr0 after any stage change
    assert all(float(r["lr"]) < lr0 * 0.95 for r in rows[1:])

    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)

    model = json.loads((out / "model.json").read_text())
    assert model["patch"] == PATCH and model["num_classes"] == 3
    assert model["network"]["name"] == "unet" and model["label_values"] == [1, 2]
    # the store's labels, unchanged: softmax over background + each value, no paint order
    assert model["labels"] == {"background": 0, "organ": 1, "lesion": 2}
    assert model["ignore_label"] is None and model["regions_class_order"] is None
    config = json.loads((out / "config.json").read_text())
    assert config == json.loads(json.dumps(asdict(cfg)))
    assert TrainConfig(**config) == cfg

    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == total
    assert 0 <= summary["wait_share"] <= 1
    stages = summary["stages"]
    assert [s["stage"] for s in stages] == list(range(10))
    assert [s["patch"] for s in stages] == [list(s.patch) for s in cur.stages]
    assert all(s["steps"] == 2 and s["seconds_per_step"] > 0 for s in stages)
    assert sum(s["seconds_compute"] for s in stages) == pytest.approx(
        summary["seconds_compute"], abs=0.05)
    assert "peak_memory_bytes" not in stages[0]  # CPU run: no CUDA peak


def test_schedule_printed_before_training_and_stages_follow(eff_run: dict[str, Any]) -> None:
    text, cur = eff_run["output"], curriculum_of(eff_run["out"])
    assert "PGPS schedule: efficiency" in text
    first_eval = text.index("step      3  stage")
    assert text.index("PGPS schedule") < first_eval
    for stage in cur.stages:  # every stage's patch is in the table
        assert "×".join(map(str, stage.patch)) in text[:first_eval]
    shown = [line.split() for line in text.splitlines() if line.startswith("step ")]
    assert len(shown) == 7
    for words in shown:
        step = int(words[1]) - 1
        assert int(words[3]) == cur.stage_at(step).index
        assert words[5] == "x".join(map(str, cur.stage_at(step).patch))


# -- 3. checkpoints ----------------------------------------------------------------------------
def test_checkpoints_load_weights_only(eff_run: dict[str, Any]) -> None:
    out, cur = eff_run["out"], curriculum_of(eff_run["out"])
    latest = torch.load(out / LATEST, weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "loader", "step"} <= set(latest)
    assert latest["step"] == cur.total_iterations
    assert latest["loader"]["next_step"] == cur.total_iterations
    assert latest["loader"]["curriculum"] == cur.fingerprint() and latest["loader"]["seed"] == 0
    rng = latest["rng"]
    assert isinstance(rng["torch"], torch.Tensor)
    assert isinstance(rng["python"][1], torch.Tensor) and isinstance(rng["numpy"][1], torch.Tensor)
    assert latest["optimizer"]["state"] and latest["optimizer"]["param_groups"][0]["nesterov"]
    assert isinstance(latest["scaler"], dict)
    final = torch.load(out / FINAL, weights_only=True)
    assert final["step"] == cur.total_iterations
    assert final["model"].keys() == latest["model"].keys()
    assert all(torch.equal(final["model"][k], latest["model"][k]) for k in final["model"])
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / LATEST
    save_checkpoint(path, {"step": 1, "w": torch.arange(4)})
    real_save = torch.save

    def dies_midway(obj: Any, fh: Any, *a: Any, **k: Any) -> None:
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", dies_midway)
    with pytest.raises(CheckpointWriteError, match="disk full") as err:
        save_checkpoint(path, {"step": 2, "w": torch.zeros(4)})
    assert str(path) in str(err.value) and "previous checkpoint is intact" in str(err.value)
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    old = load_checkpoint(path)
    assert old["step"] == 1 and torch.equal(old["w"], torch.arange(4))
    assert [p.name for p in tmp_path.iterdir()] == [LATEST]  # no temporary file left behind
    save_checkpoint(path, {"step": 3})
    assert torch.load(path, weights_only=True)["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == [LATEST]


# -- 5. folds and the test cases ---------------------------------------------------------------
def test_fold_from_splits_file(eff_run: dict[str, Any], tiny_store: Path) -> None:
    seen, fold0 = eff_run["seen"], eff_run["splits"][0]
    assert seen["train_cases"] == fold0["train"] and seen["val_cases"] == fold0["val"]
    assert set(seen["train_batches"]) <= set(fold0["train"])
    assert len(seen["train_batches"]) == 2 * 20
    assert set(seen["val_batches"]) == set(fold0["val"])
    test_ids = open_store(tiny_store).test_ids
    assert test_ids and not set(test_ids) & set(seen["train_batches"] + seen["val_batches"])


def test_test_cases_never_train(tiny_store: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    store = open_store(tiny_store)
    cur = Curriculum.from_steps(patch=PATCH, steps=(2, 4, 4), epochs=1, iterations_per_epoch=1,
                                batch=2, mode="constant")
    with pytest.raises(PGPSInputError, match="test cases are never used for training"):
        make_loader(store, cur, workers=1, cases=[store.case_ids[0], store.test_ids[0]])
    splits = tmp_path / "splits_final.json"
    splits.write_text(json.dumps([{"train": store.case_ids[:2] + store.test_ids,
                                   "val": store.case_ids[2:]}]))
    rc = train_main([str(tiny_store), "--out", str(tmp_path / "r"), "--preset", "tiny",
                     "--patch", *map(str, PATCH), "--splits", str(splits), "--fold", "0",
                     "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "not among the store's training cases" in err[0] and store.test_ids[0] in err[0]


# -- 5. CLI errors: one line, exit 2 -----------------------------------------------------------
def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with one_thread():
        rc = train_main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2, captured
    assert len(lines) == 1, lines
    assert lines[0].startswith("pgps-train: error: ")
    return lines[0]


def test_cli_missing_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _cli_error([str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "r"),
                       "--preset", "tiny"], capsys)
    assert "nope.zarr" in line and "pgps-convert" in line
    assert not (tmp_path / "r" / "steps.csv").exists()


def test_cli_off_lattice_patch(tiny_store: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    line = _cli_error([str(tiny_store), "--out", str(tmp_path / "r"), "--preset", "tiny",
                       "--fold", "all", "--patch", "9", "16", "16"], capsys)
    assert "off the unet lattice" in line
    assert "8×16×16" in line and "10×16×16" in line  # the nearest valid patches, below and above


def test_cli_nnunet_plans_with_other_spacing(tiny_store: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    plans = json.loads(PLANS.read_text())["configurations"]["3d_fullres"]["spacing"]
    assert not np.allclose(plans, open_store(tiny_store).spacing, rtol=1e-3)
    line = _cli_error([str(tiny_store), "--out", str(tmp_path / "r"), "--preset", "tiny",
                       "--fold", "all", "--nnunet-plans", str(PLANS)], capsys)
    assert "pgps-convert" in line and "--spacing" in line


def test_cli_fold_needs_five_cases(tiny_store: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    line = _cli_error([str(tiny_store), "--out", str(tmp_path / "r"), "--preset", "tiny",
                       "--patch", *map(str, PATCH), "--fold", "0"], capsys)
    assert "--fold all" in line
    line = _cli_error([str(tiny_store), "--out", str(tmp_path / "r"), "--preset", "tiny",
                       "--patch", *map(str, PATCH), "--fold", "all", "--mode", "efficiency",
                       "--epochs", "3"], capsys)
    assert "epoch" in line  # efficiency needs at least one epoch per stage (10 here)


# -- 6. end to end with the final evaluation ---------------------------------------------------
def test_final_evaluation_in_source_geometry(eff_run: dict[str, Any], tiny_raw: Path) -> None:
    out, summary = eff_run["out"], eff_run["summary"]
    on_disk = json.loads((out / "summary.json").read_text())
    final = on_disk["final"]
    assert final == json.loads(json.dumps(summary["final"]))
    assert final["space"] == "source" and final["cases"] == 1
    assert set(final["mean"]) == {"organ", "lesion"}
    assert all(v is None or 0 <= v <= 1 for v in final["mean"].values())
    (val_id,) = eff_run["splits"][0]["val"]
    assert set(final["per_case"]) == {val_id}
    pred = nib.load(out / "validation" / f"{val_id}.nii.gz")
    ref = nib.load(tiny_raw / "labelsTr" / f"{val_id}.nii.gz")
    assert pred.shape == ref.shape
    np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-5)
    values = np.unique(np.asarray(pred.dataobj))
    assert set(values.tolist()) <= {0, 1, 2}
    assert json.loads((out / "validation" / "summary.json").read_text())["mean"] == final["mean"]
    assert os.path.getsize(out / FINAL) > 0


def test_max_seconds_stops_with_a_checkpoint(tiny_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = TrainConfig(store=str(tiny_store), out=str(out), mode="constant", patch=PATCH,
                      epochs=1, iterations_per_epoch=50, batch=2, workers=1,
                      eval_every=10**9, eval_batches=1, save_every=10**9, device="cpu",
                      fold="all", final_eval=False, quiet=True, max_seconds=1e-9,
                      net_kwargs=tiny_kwargs("unet"))
    summary, _, _ = spied_train(cfg)
    assert summary["stopped_at_step"] == 1
    assert [r["step"] for r in read_csv(out / "steps.csv")] == ["0"]
    assert torch.load(out / LATEST, weights_only=True)["loader"]["next_step"] == 1
    assert torch.load(out / FINAL, weights_only=True)["step"] == 1
    assert summary["stages"][0]["steps"] == 1


# -- 7. the GPU check script, on a machine without CUDA -----------------------------------------
GPU_CHECK = Path(__file__).parents[1] / "tools" / "gpu_check.sh"


def test_gpu_check_dry_run_and_no_cuda_message(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "gc"),
           "CUDA_VISIBLE_DEVICES": ""}
    dry = subprocess.run(["bash", str(GPU_CHECK), "--dry-run"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    for mode in ("constant", "efficiency", "performance"):
        assert f"--mode {mode}" in dry.stdout
    assert "pgps_data.cli.synth" in dry.stdout and "pgps_data.cli.convert" in dry.stdout
    assert "imports ok" in dry.stdout
    assert "no CUDA device" in dry.stdout
    real = subprocess.run(["bash", str(GPU_CHECK)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert real.returncode == 2
    lines = real.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0], real.stderr
    assert not (tmp_path / "gc" / "raw").exists()  # stopped before any work
