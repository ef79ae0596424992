"""Region datasets train as nnU-Net trains them: one sigmoid per region, Dice + BCE.

The loss, the pseudo-Dice and the softmax path are checked on hand-made tensors against
values worked out by hand; one end-to-end run goes from a BraTS-like ``pgps-synth``
dataset (nested regions + an ignore label) through convert, train, pgps-predict and
pgps-evaluate.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pgps_data.labels import Labels
from pgps_data.raw.convert import convert
from pgps_data.raw.readers import read_volume
from pgps_data.synthetic.dataset import write_synthetic_dataset
from pgps_train.cli.evaluate import main as evaluate_main
from pgps_train.cli.predict import main as predict_main
from pgps_train.inference import load_model, predict_case
from pgps_train.losses import RegionObjective, SoftmaxObjective, objective_for
from pgps_train.networks import tiny_kwargs
from pgps_train.trainer import TrainConfig, train
from tests.torch_threads import one_thread

LN3 = math.log(3.0)  # sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4, sigmoid(0) = 1/2
S = 1e-5  # nnU-Net's smooth
TWO = Labels({"background": 0, "whole": [1, 2], "core": [2], "ignore": 4},
             regions_class_order=[1, 2])


def _tensor(rows: list[list[float]]) -> torch.Tensor:
    """(1, C, 1, 1, N) from C rows of N voxels."""
    return torch.tensor(rows, dtype=torch.float32).reshape(1, len(rows), 1, 1, -1)


# four voxels with label values 2, 1, 0 and the ignore label 4
VALUES = torch.tensor([2, 1, 0, 4]).reshape(1, 1, 1, 1, 4)
LOGITS = _tensor([[LN3, 0.0, -LN3, LN3],    # whole: p = 3/4, 1/2, 1/4, (3/4 ignored)
                  [0.0, -LN3, -LN3, 0.0]])  # core:  p = 1/2, 1/4, 1/4, (1/2 ignored)


def test_region_loss_by_hand() -> None:
    objective = objective_for(TWO)
    assert isinstance(objective, RegionObjective)
    loss = objective.loss(LOGITS, objective.target(VALUES))
    # targets on the annotated voxels v0..v2: whole 1 1 0, core 1 0 0
    dice_whole = (2 * (3 / 4 + 1 / 2) + S) / (2 + (3 / 4 + 1 / 2 + 1 / 4) + S)
    dice_core = (2 * (1 / 2) + S) / (1 + (1 / 2 + 1 / 4 + 1 / 4) + S)
    # BCE: four terms -ln(3/4), two -ln(1/2); nnU-Net divides by the 3 annotated voxels
    bce = (4 * math.log(4 / 3) + 2 * math.log(2)) / 3
    assert float(loss) == pytest.approx(bce + 1 - (dice_whole + dice_core) / 2, rel=1e-6)


def test_region_loss_without_ignore_label_by_hand() -> None:
    labels = Labels({"background": 0, "whole": [1, 2], "core": [2]}, regions_class_order=[1, 2])
    values = torch.tensor([2, 1, 0, 0]).reshape(1, 1, 1, 1, 4)
    loss = objective_for(labels).loss(LOGITS, values.long())
    # every voxel counts: whole 1 1 0 0 with p 3/4 1/2 1/4 3/4, core 1 0 0 0 with 1/2 1/4 1/4 1/2
    dice_whole = (2 * (3 / 4 + 1 / 2) + S) / (2 + 9 / 4 + S)
    dice_core = (2 * (1 / 2) + S) / (1 + 3 / 2 + S)
    # BCE: the mean of 8 terms: -ln(3/4) x4, -ln(1/2) x3, -ln(1/4) x1
    bce = (4 * math.log(4 / 3) + 3 * math.log(2) + math.log(4)) / 8
    assert float(loss) == pytest.approx(bce + 1 - (dice_whole + dice_core) / 2, rel=1e-6)


def test_region_loss_deep_supervision_downsamples_the_values() -> None:
    objective = objective_for(TWO)
    torch.manual_seed(0)
    full = torch.randn(1, 2, 2, 4, 4)
    half, quarter = torch.randn(1, 2, 1, 2, 2), torch.randn(1, 2, 1, 1, 1)
    values = torch.randint(0, 5, (1, 1, 2, 4, 4))
    total = objective.loss([full, half, quarter], values)
    # weights 1, 1/2, 0 normalised: 2/3, 1/3; the half head sees every other value, the
    # odd ones: nnU-Net's nearest-exact takes input floor((i + 0.5) * 2) = 2i + 1
    expected = (2 / 3 * objective.loss(full, values)
                + 1 / 3 * objective.loss(half, values[:, :, 1::2, 1::2, 1::2]))
    assert float(total) == pytest.approx(float(expected), rel=1e-6)


def test_region_pseudo_dice_counts_by_hand() -> None:
    counts = objective_for(TWO).counts(LOGITS, VALUES)
    # sigmoid > 0.5 on annotated voxels: whole only at v0 (1/2 is not above), core nowhere
    # whole: truth v0 v1 → tp 1, fp 0, fn 1; core: truth v0 → tp 0, fp 0, fn 1; v3 ignored
    assert counts.tolist() == [[1, 0, 1], [0, 0, 1]]


def test_softmax_objective_is_the_value_path() -> None:
    labels = Labels({"background": 0, "organ": 1, "lesion": 2, "ignore": 3})
    objective = objective_for(labels)
    assert isinstance(objective, SoftmaxObjective) and objective.num_classes == 3
    values = torch.tensor([2, 1, 0, 3]).reshape(1, 1, 1, 1, 4)
    target = objective.target(values)
    assert target.ravel().tolist() == [2, 1, 0, 3]  # ignore → ignore_index 3
    logits = _tensor([[0.0, 0.0, LN3, 0.0], [0.0, LN3, 0.0, 0.0], [LN3, 0.0, 0.0, 0.0]])
    # softmax of (ln 3, 0, 0) puts 3/5 on the right class, 1/5 elsewhere, at v0..v2
    ce = -math.log(3 / 5)
    dice = (2 * 3 / 5 + S) / (1 + 1 + S)  # organ and lesion alike: I 3/5, pred 1, truth 1
    loss = objective.loss(logits, target)
    assert float(loss) == pytest.approx(ce + 1 - dice, rel=1e-5)
    assert objective.counts(logits, target).tolist() == [[1, 0, 0], [1, 0, 0]]


# --------------------------------------------------------------------- end to end


def _dice(pred: np.ndarray, ref: np.ndarray, values: list[int], ignore: int) -> float | None:
    keep = ref != ignore
    p, r = np.isin(pred, values) & keep, np.isin(ref, values) & keep
    total = int(p.sum() + r.sum())
    return None if total == 0 else 2 * int((p & r).sum()) / total


def test_brats_like_regions_synth_convert_train_predict_evaluate(tmp_path: Path) -> None:
    raw = write_synthetic_dataset(tmp_path / "Dataset001_Reg", cases=3, test_cases=0,
                                  size=(24, 48, 48), layout="nnunet", regions=True,
                                  ignore=True, organ_fraction=0.2, seed=5)
    store = tmp_path / "reg.zarr"
    assert convert(raw, store, workers=1, quiet=True, log=lambda *a: None)["errors"] == []
    cfg = TrainConfig(store=str(store), out=str(tmp_path / "run"), mode="efficiency",
                      patch=[8, 16, 16], epochs=0, iterations_per_epoch=1, batch=2,
                      workers=1, eval_every=5, eval_batches=1, save_every=10**9,
                      device="cpu", fold="all", net_kwargs=tiny_kwargs("unet"), quiet=True)
    with one_thread():
        _check_run(raw, train(cfg, log=lambda *a: None), tmp_path)


def _check_run(raw: Path, summary: dict, tmp_path: Path) -> None:
    run = tmp_path / "run"
    model = json.loads((run / "model.json").read_text())
    assert model["num_classes"] == 3 and model["regions_class_order"] == [1, 2, 3]
    assert model["labels"] == {"background": 0, "whole": [1, 2, 3], "core": [2, 3],
                               "enhancing": [3], "ignore": 4}
    assert len(summary["last_eval"]["pseudo_dice"]) == 3  # one per region
    final = summary["final"]
    assert final["space"] == "source" and final["cases"] == 3
    assert set(final["mean"]) == {"whole", "core", "enhancing"}
    # per case, the comparison's extra scores: lesion-wise F1 and surface Dice per region
    assert set(final["lesion_f1"]) == set(final["nsd"]) == set(final["per_case"])
    for scores in (*final["lesion_f1"].values(), *final["nsd"].values()):
        assert set(scores) == {"whole", "core", "enhancing"}
        assert all(v is None or 0.0 <= v <= 1.0 for v in scores.values())

    # the network: one output channel per region
    net, config = load_model(run)
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 8, 16, 16)).shape[1] == 3

    # pgps-predict one case, pgps-evaluate it with the labels.json predict wrote
    images, labels_dir, out = tmp_path / "in", tmp_path / "ref", tmp_path / "pred"
    images.mkdir()
    labels_dir.mkdir()
    shutil.copy(raw / "imagesTr" / "synth_000_0000.nii.gz", images)
    shutil.copy(raw / "labelsTr" / "synth_000.nii.gz", labels_dir)
    assert predict_main([str(run), str(images), str(out), "--save-probabilities",
                         "--quiet"]) == 0
    meta = json.loads((out / "synth_000.json").read_text())
    assert meta["nonlinearity"] == "sigmoid" and meta["regions_class_order"] == [1, 2, 3]
    assert meta["channels"] == [[1, 2, 3], [2, 3], [3]]
    with np.load(out / "synth_000.npz", allow_pickle=False) as npz:
        assert npz["probabilities"].shape[0] == 3
    pred = read_volume(out / "synth_000.nii.gz").data.astype(np.int64)
    # the written map is the painting of the sigmoid probabilities in regions_class_order
    label, probs, _ = predict_case(net, config, [images / "synth_000_0000.nii.gz"],
                                   return_probabilities=True)
    assert probs.shape == (3, *pred.shape) and probs.min() >= 0 and probs.max() <= 1
    np.testing.assert_array_equal(Labels.from_dict(config).label_map(probs), label)
    np.testing.assert_array_equal(pred, label)
    assert set(np.unique(pred)) <= {0, 1, 2, 3}
    assert evaluate_main([str(out), str(labels_dir)]) == 0
    scores = json.loads((out / "summary.json").read_text())["per_case"]["synth_000"]
    ref = read_volume(labels_dir / "synth_000.nii.gz").data.astype(np.int64)
    assert (ref == 4).any()  # the ignore slabs are there, and left out of every score
    for name, values in {"whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}.items():
        expected = _dice(pred, ref, values, ignore=4)
        assert scores[name] == (None if expected is None else pytest.approx(expected))
