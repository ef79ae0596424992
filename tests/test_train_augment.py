"""The trainer with nnU-Net's augmentation on the device: what a run records and refuses.

The transforms are tested against batchgeneratorsv2 in test_augment_*; the loader's boxes in
test_loader_augment; exact resume with augmentation on in test_train_resume (the default is
``--augment nnunet``). Here: the flags reach config.json and the loader, augmentation is
timed apart from compute, an old run resumes without it, bad settings are one line, and
the augmenter is a pure function of (seed, step, slot).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch

import pgps_train.trainer as trainer_mod
from pgps_data import Curriculum, make_loader, open_store
from pgps_data.errors import PGPSInputError
from pgps_data.labels import Labels
from pgps_data.schedule.augment_geometry import OUTSIDE, AugmentSpec
from pgps_train.augment.pipeline import BatchAugmenter, augmentation_for
from pgps_train.cli.train import build_parser, config_from_args, resume_config
from pgps_train.networks import tiny_kwargs
from pgps_train.trainer import TrainConfig, train
from tests.torch_threads import one_thread

PATCH = [8, 16, 16]


def _run(cfg: TrainConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train ``cfg``; returns the summary and the keyword arguments make_loader got."""
    calls: list[dict[str, Any]] = []
    real = trainer_mod.make_loader

    def spy(store, cur, **kw):  # noqa: ANN001, ANN202
        calls.append(kw)
        return real(store, cur, **kw)

    with pytest.MonkeyPatch.context() as mp, one_thread(), \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        mp.setattr(trainer_mod, "make_loader", spy)
        summary = train(cfg, log=lambda *a, **k: None)
    return summary, calls


def _cfg(store: Path, out: Path, patch: list[int] = PATCH, **kw: Any) -> TrainConfig:
    return TrainConfig(store=str(store), out=str(out), mode="performance", patch=patch,
                       epochs=0, iterations_per_epoch=2, batch=2, workers=1, eval_every=10**9,
                       eval_batches=1, save_every=10**9, device="cpu", fold="all",
                       final_eval=False, quiet=True, net_kwargs=tiny_kwargs("unet"), **kw)


def test_augmented_run_records_and_times_augmentation_apart(tiny_store: Path,
                                                             tmp_path: Path) -> None:
    summary, calls = _run(_cfg(tiny_store, tmp_path / "aug", augment_geometry="final",
                               mirror_axes=[1, 2]))
    config = json.loads((tmp_path / "aug" / "config.json").read_text())
    assert (config["augment"], config["augment_geometry"], config["mirror_axes"]) == \
        ("nnunet", "final", [1, 2])
    assert calls[0]["augment"] == AugmentSpec(geometry="final")
    assert summary["seconds_augment"] > 0
    assert all(st["seconds_augment"] > 0 and 0 < st["augment_share"] < 1
               for st in summary["stages"])
    with open(tmp_path / "aug" / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[-1]["seconds_augment"]) == pytest.approx(summary["seconds_augment"],
                                                               abs=0.01)

    plain, calls = _run(_cfg(tiny_store, tmp_path / "none", augment="none"))
    assert calls[0]["augment"] is None and plain["seconds_augment"] == 0.0
    assert all(st["seconds_augment"] == 0.0 for st in plain["stages"])


def test_final_geometry_trains_where_the_dummy_2d_decision_changes(tiny_store: Path,
                                                                   tmp_path: Path) -> None:
    """8×16×16 is 3D to nnU-Net, its first stage 2×4×4 is too, but a final 4×16×16 is dummy
    2D: with "final" every stage warps in-plane with a box that keeps the stage's axis 0
    (reading the final patch's box here crashed: axis 0 of 4×19×19 is not the stage's 2)."""
    summary, calls = _run(_cfg(tiny_store, tmp_path / "d2", augment_geometry="final",
                               patch=[4, 16, 16]))
    assert calls[0]["augment"] == AugmentSpec(geometry="final")
    assert summary["seconds_augment"] > 0 and len(summary["stages"]) > 2


def test_cli_flags_and_an_old_run_resumes_without_augmentation(tiny_store: Path,
                                                               tmp_path: Path) -> None:
    parse = build_parser().parse_args
    base = [str(tiny_store), "--out", str(tmp_path / "r")]
    cfg = config_from_args(parse(base))
    assert (cfg.augment, cfg.augment_geometry, cfg.mirror_axes) == ("nnunet", "stage", [0, 1, 2])
    cfg = config_from_args(parse([*base, "--augment", "none", "--mirror-axes", "2", "0"]))
    assert cfg.augment == "none" and cfg.mirror_axes == [0, 2]
    assert config_from_args(parse([*base, "--mirror-axes"])).mirror_axes == []
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        parse([*base, "--augment-geometry", "first"])
    # a config.json written before augmentation existed resumes as it started: without it
    old = {k: v for k, v in asdict(config_from_args(parse(base))).items()
           if k not in ("augment", "augment_geometry", "mirror_axes")}
    resumed = resume_config(parse([*base, "--resume"]), old)
    assert resumed.augment == "none"
    new = asdict(config_from_args(parse(base)))
    assert resume_config(parse([*base, "--resume"]), new).augment == "nnunet"


class _Store:
    path, channels = Path("/data/x.zarr"), 1
    attrs = {"plan": {"use_mask_for_norm": True}, "modalities": ["MRI", "CT"]}


def test_settings_that_cannot_work_are_one_line() -> None:
    labels = Labels({"background": 0, "tumour": 1, "edge": OUTSIDE})
    cfg = TrainConfig(store="x", out="y")
    with pytest.raises(PGPSInputError, match=r"label value 255 .* --augment none"):
        augmentation_for(cfg, _Store(), labels)
    ok = Labels({"background": 0, "tumour": 1})
    cfg.augment = "nnUNet"
    with pytest.raises(PGPSInputError, match="--augment nnUNet: choose one of nnunet, none"):
        augmentation_for(cfg, _Store(), ok)
    cfg.augment = "nnunet"
    spec, aug = augmentation_for(cfg, _Store(), ok)
    assert spec == AugmentSpec(geometry="stage")
    assert aug.mask_channels == (0,)  # the MRI channel; a CT channel is never mask-normalised
    cfg.augment = "none"
    assert augmentation_for(cfg, _Store(), ok) == (None, None)


def test_the_augmenter_is_a_function_of_seed_step_and_slot(tiny_store: Path) -> None:
    store = open_store(tiny_store)
    cur = Curriculum.from_steps(patch=PATCH, steps=(2, 4, 4), epochs=1, iterations_per_epoch=4,
                                batch=6, mode="constant")
    loader = make_loader(store, cur, workers=0, seed=3, augment=AugmentSpec())
    batches = [next(iter(loader)) for _ in range(1)] + [next(loader) for _ in range(2)]
    loader.close()
    assert sum(len(b["warp_slots"]) for b in batches) > 0  # some samples were warped
    aug = BatchAugmenter(channels=store.channels, seed=3)
    with one_thread():
        outs = [aug(b, b["image"].clone(), b["label"].clone()) for b in batches]
        again = aug(batches[1], batches[1]["image"].clone(), batches[1]["label"].clone())
    assert torch.equal(outs[1][0], again[0]) and torch.equal(outs[1][1], again[1])
    assert not torch.equal(outs[1][0], outs[2][0])  # another step, other draws
    for img, lab in outs:
        assert img.dtype == torch.float32 and lab.dtype == torch.uint8
        assert set(lab.unique().tolist()) <= {0, 1, 2}  # outside became background
        assert torch.isfinite(img).all()
    # the draws of a slot do not depend on the batch around it: slot 0 of step 1 alone
    one = {k: v for k, v in batches[1].items()}
    keep = torch.tensor([0])
    one["image"], one["label"] = batches[1]["image"][:1], batches[1]["label"][:1]
    warped = batches[1]["warp_slots"] == 0
    for key in ("warp_image", "warp_label", "warp_angles", "warp_scales"):
        one[key] = batches[1][key][warped]
    one["warp_slots"] = keep[: int(warped.sum())]
    with one_thread():
        alone = aug(one, one["image"].clone(), one["label"].clone())
    assert torch.equal(alone[0][0], outs[1][0][0]) and torch.equal(alone[1][0], outs[1][1][0])


def test_openmp_waits_passively_unless_the_environment_says_otherwise() -> None:
    import os
    import subprocess
    import sys

    code = ("import sys, os, pgps_train; assert 'torch' not in sys.modules; "
            "import pgps_train.cli.train; print(os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "PASSIVE", out.stderr[-500:]
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True)
    assert out.stdout.strip() == "ACTIVE", out.stderr[-500:]
