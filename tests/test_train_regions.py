"""Training, prediction and evaluation on an nnU-Net dataset with regions and an ignore label."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pgps_data.raw.convert import convert
from pgps_data.synthetic.dataset import write_synthetic_dataset
from pgps_train.networks import tiny_kwargs
from pgps_train.trainer import TrainConfig, train


def test_regions_and_ignore_train_predict_and_score(tmp_path: Path) -> None:
    raw = write_synthetic_dataset(tmp_path / "Dataset001_Reg", cases=3, test_cases=0,
                                  size=(24, 48, 48), layout="nnunet", regions=True,
                                  ignore=True, organ_fraction=0.2, seed=5)
    store = tmp_path / "reg.zarr"
    assert convert(raw, store, workers=1, quiet=True, log=lambda *a: None)["errors"] == []
    torch.set_num_threads(1)
    cfg = TrainConfig(store=str(store), out=str(tmp_path / "run"), mode="efficiency",
                      patch=[8, 16, 16], epochs=0, iterations_per_epoch=1, batch=2,
                      workers=1, eval_every=5, eval_batches=1, save_every=10**9,
                      device="cpu", fold="all", net_kwargs=tiny_kwargs("unet"), quiet=True)
    summary = train(cfg, log=lambda *a: None)
    model = json.loads((tmp_path / "run" / "model.json").read_text())
    # the network predicts label values (softmax), not the regions
    assert model["regions_class_order"] is None
    assert sorted(v for v in model["labels"].values() if isinstance(v, int)) == [0, 1, 2, 3]
    final = summary["final"]
    assert final["space"] == "source" and final["cases"] == 3
    # regions are scored as unions of values in the source geometry
    assert set(final["mean"]) == {"organ_and_lesion", "lesion"}
    assert all(v is None or 0.0 <= v <= 1.0 for v in final["mean"].values())
    assert len(list((tmp_path / "run" / "validation").glob("*.nii.gz"))) == 3
