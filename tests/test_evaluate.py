"""Dice per label and region against hand-computed values; folder evaluation and its CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pgps_data.errors import PGPSInputError
from pgps_train.evaluate import dice_scores, evaluate_folder, load_labels, main, print_table

LABELS = {"background": 0, "organ": 1, "lesion": 2, "cyst": 3, "vessel": 4}

# ten voxels in a row; index:   0  1  2  3  4  5  6  7  8  9
PRED = np.array([1, 1, 1, 1, 0, 0, 2, 2, 0, 3]).reshape(1, 1, 10)
REF = np.array([1, 1, 0, 0, 0, 0, 2, 0, 2, 0]).reshape(1, 1, 10)


def test_dice_by_hand():
    scores = dice_scores(PRED, REF, LABELS)
    # organ: pred {0,1,2,3}, ref {0,1}: 2*2 / (4+2)
    assert scores["organ"] == pytest.approx(4 / 6)
    # lesion: pred {6,7}, ref {6,8}: 2*1 / (2+2)
    assert scores["lesion"] == pytest.approx(0.5)
    # cyst: predicted at 9, absent from the reference: 0, not "empty"
    assert scores["cyst"] == 0.0
    # vessel: in neither → None (nnU-Net: NaN)
    assert scores["vessel"] is None
    assert list(scores) == ["organ", "lesion", "cyst", "vessel"]  # no background


def test_regions_score_the_union():
    labels = {"background": 0, "organ_and_lesion": [1, 2], "lesion": 2}
    scores = dice_scores(PRED, REF, labels)
    # union {1,2}: pred {0,1,2,3,6,7} (6), ref {0,1,6,8} (4), common {0,1,6}: 2*3 / 10
    assert scores["organ_and_lesion"] == pytest.approx(0.6)
    assert scores["lesion"] == pytest.approx(0.5)


def test_ignore_label_excludes_voxels_from_both():
    ref = REF.copy()
    ref[0, 0, 2:4] = 5  # the organ's two false positives fall on ignored voxels
    ref[0, 0, 7] = 5  # and so does the lesion's false positive at 7
    labels = {**LABELS, "ignore": 5}
    scores = dice_scores(PRED, ref, labels)  # ignore taken from labels
    assert scores["organ"] == pytest.approx(1.0)  # pred {0,1}, ref {0,1}
    assert scores["lesion"] == pytest.approx(2 / 3)  # pred {6}, ref {6,8}: 2*1 / (1+2)
    assert "ignore" not in scores
    # without the ignore label, 5 is just an unscored value: organ as before, lesion 0.5
    plain = dice_scores(PRED, ref, LABELS)
    assert plain["organ"] == pytest.approx(4 / 6) and plain["lesion"] == pytest.approx(0.5)
    # an explicit ignore_label argument works the same way
    assert dice_scores(PRED, ref, LABELS, ignore_label=5)["organ"] == pytest.approx(1.0)


AFFINE = np.array([[-0.8, 0.02, 0, 10], [0.02, -0.8, 0, 20], [0, 0, 2.5, -300], [0, 0, 0, 1]])


def _save(path: Path, zyx: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    nib.save(nib.Nifti1Image(zyx.astype(np.uint8).transpose(2, 1, 0), affine), path)


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    a_pred = np.zeros((2, 3, 4), np.uint8)
    a_pred[0, 0, :2] = 1
    a_ref = np.zeros((2, 3, 4), np.uint8)
    a_ref[0, 0, :2] = 1  # case a: organ perfect (1.0), no lesion anywhere (None)
    _save(pred / "a.nii.gz", a_pred)
    _save(ref / "a.nii.gz", a_ref)
    _save(pred / "b.nii.gz", PRED.reshape(1, 2, 5))
    _save(ref / "b.nii.gz", REF.reshape(1, 2, 5))  # case b: organ 2/3, lesion 1/2
    _save(ref / "c.nii.gz", a_ref)  # a reference without prediction: not scored
    return pred, ref


def test_folder_means_skip_none(tmp_path: Path):
    pred, ref = _folders(tmp_path)
    labels = {"background": 0, "organ": 1, "lesion": 2}
    res = evaluate_folder(pred, ref, labels)
    assert res["per_case"]["a"] == {"organ": 1.0, "lesion": None}
    assert res["per_case"]["b"]["lesion"] == pytest.approx(0.5)
    assert res["mean"]["organ"] == pytest.approx((1 + 4 / 6) / 2)
    assert res["mean"]["lesion"] == pytest.approx(0.5)  # case a's None left out
    assert res["foreground_mean"] == pytest.approx(((1 + 4 / 6) / 2 + 0.5) / 2)
    assert sorted(res["per_case"]) == ["a", "b"]


def test_geometry_mismatch_is_refused(tmp_path: Path):
    pred, ref = _folders(tmp_path)
    moved = AFFINE.copy()
    moved[0, 3] += 1.0  # 1 mm shift
    _save(pred / "a.nii.gz", np.zeros((2, 3, 4)), moved)
    with pytest.raises(PGPSInputError, match=r"pred/a\.nii\.gz: affine differs from reference .*ref/a\.nii\.gz"):
        evaluate_folder(pred, ref, {"organ": 1})
    _save(pred / "a.nii.gz", np.zeros((2, 3, 5)))
    with pytest.raises(PGPSInputError, match=r"pred/a\.nii\.gz: shape .* differs from reference .*ref/a\.nii\.gz"):
        evaluate_folder(pred, ref, {"organ": 1})


def test_prediction_without_reference_is_refused(tmp_path: Path):
    pred, ref = _folders(tmp_path)
    _save(pred / "d.nii.gz", np.zeros((2, 3, 4)))
    with pytest.raises(PGPSInputError, match=r"d\.nii\.gz: no reference label"):
        evaluate_folder(pred, ref, {"organ": 1})


def test_label_files_in_both_forms(tmp_path: Path):
    msd = tmp_path / "msd.json"
    msd.write_text(json.dumps({"labels": {"0": "background", "1": "organ", "2": "lesion"}}))
    assert load_labels(msd) == ({"background": 0, "organ": 1, "lesion": 2}, None)
    nn = tmp_path / "nn.json"
    nn.write_text(json.dumps({"labels": {"background": 0, "both": [1, 2], "ignore": 3}}))
    assert load_labels(nn) == ({"background": 0, "both": [1, 2], "ignore": 3}, 3)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"labels": {"organ": "x1"}}))
    with pytest.raises(PGPSInputError, match="bad.json: MSD label key 'organ'"):
        load_labels(bad)


def test_cli_writes_json_and_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture):
    pred, ref = _folders(tmp_path)
    ds = tmp_path / "dataset.json"
    ds.write_text(json.dumps({"labels": {"0": "background", "1": "organ", "2": "lesion"}}))
    out = tmp_path / "res.json"
    assert main([str(pred), str(ref), "--labels", str(ds), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["per_case"]["a"]["lesion"] is None
    assert doc["mean"]["organ"] == pytest.approx((1 + 4 / 6) / 2)
    printed = capsys.readouterr().out
    assert "mean" in printed and "0.8333" in printed and "lesion" in printed
    # default labels: PRED_DIR/labels.json from pgps-predict; default output summary.json
    (pred / "labels.json").write_text(json.dumps({"labels": {"background": 0, "organ": 1},
                                                  "ignore_label": None}))
    assert main([str(pred), str(ref)]) == 0
    assert json.loads((pred / "summary.json").read_text())["mean"] == {"organ": pytest.approx(5 / 6)}


def test_cli_user_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture):
    pred, ref = _folders(tmp_path)
    assert main([str(pred), str(ref)]) == 2  # no labels.json, no --labels
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"pgps-evaluate: error: {pred / 'labels.json'}: missing (give --labels dataset.json)"]


def test_print_table_marks_none(capsys: pytest.CaptureFixture):
    from rich.console import Console

    results = {"per_case": {"x": {"organ": 0.5, "lesion": None}},
               "mean": {"organ": 0.5, "lesion": None}, "foreground_mean": 0.5}
    print_table(results, console=Console(width=100, force_terminal=False))
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if " x " in line)
    assert "0.5000" in row and " - " in row  # the lesion's None
    assert "foreground mean Dice: 0.5000" in out
