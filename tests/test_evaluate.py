"""Dice per label and region against hand-computed values; folder evaluation and its CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pgps_data.errors import PGPSInputError
from pgps_data.labels import Labels
from pgps_train.cli.evaluate import main
from pgps_train.evaluate import dice_scores, evaluate_folder, print_table

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


# ------------------------------------------------ predictions and labels that do not match


def _ds(tmp_path: Path) -> Path:
    ds = tmp_path / "dataset.json"
    ds.write_text(json.dumps({"labels": {"0": "background", "1": "organ", "2": "lesion"}}))
    return ds


def test_missing_prediction_is_named_and_refused(tmp_path: Path, capsys: pytest.CaptureFixture):
    """A label without its prediction: no mean over the others, exit 1, nothing written."""
    pred, ref = _folders(tmp_path)
    _save(ref / "c.nii.gz", np.zeros((2, 3, 4)))
    with pytest.raises(PGPSInputError, match=r"no prediction for 1 of 3 labelled case\(s\) .*: c "):
        evaluate_folder(pred, ref, {"organ": 1})
    out = tmp_path / "res.json"
    assert main([str(pred), str(ref), "--labels", str(_ds(tmp_path)), "--json", str(out)]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pgps-evaluate: error: {pred}: no prediction for 1")
    assert ": c (" in err[0] and "--allow-missing" in err[0]
    assert not out.exists() and "mean" not in captured.out


def test_allow_missing_scores_the_found_and_records_the_missing(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture):
    pred, ref = _folders(tmp_path)
    _save(ref / "c.nii.gz", np.zeros((2, 3, 4)))
    out = tmp_path / "res.json"
    args = [str(pred), str(ref), "--labels", str(_ds(tmp_path)), "--json", str(out)]
    assert main([*args, "--allow-missing"]) == 0
    doc = json.loads(out.read_text())
    assert doc["missing"] == ["c"] and doc["unlabelled"] == []
    assert sorted(doc["per_case"]) == ["a", "b"]
    assert doc["mean"]["organ"] == pytest.approx((1 + 4 / 6) / 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pgps-evaluate: warning: ")
    assert "no prediction for 1 labelled case(s)" in err[0] and ": c;" in err[0]


def test_many_missing_cases_name_the_first_few_and_the_count(tmp_path: Path):
    pred, ref = _folders(tmp_path)
    for i in range(8):
        _save(ref / f"m{i}.nii.gz", np.zeros((2, 3, 4)))
    with pytest.raises(PGPSInputError) as info:
        evaluate_folder(pred, ref, {"organ": 1})
    msg = str(info.value)
    assert "no prediction for 8 of 10 labelled case(s)" in msg
    assert "m0, m1, m2, m3, m4 and 3 more" in msg and "m5" not in msg and "\n" not in msg
    assert info.value.missing == [f"m{i}" for i in range(8)]


def test_prediction_without_label_is_named(tmp_path: Path, capsys: pytest.CaptureFixture):
    pred, ref = _folders(tmp_path)
    _save(pred / "d.nii.gz", np.zeros((2, 3, 4)))
    with pytest.raises(PGPSInputError, match=r"pred: 1 prediction\(s\) have no label in .*ref: d "):
        evaluate_folder(pred, ref, {"organ": 1})
    out = tmp_path / "res.json"
    args = [str(pred), str(ref), "--labels", str(_ds(tmp_path)), "--json", str(out)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "have no label" in err[0] and "check LABEL_DIR" in err[0]
    assert main([*args, "--allow-missing"]) == 0
    doc = json.loads(out.read_text())
    assert doc["unlabelled"] == ["d"] and doc["missing"] == [] and "d" not in doc["per_case"]


def test_no_matching_case_at_all_is_refused_even_when_allowed(tmp_path: Path):
    pred, ref = _folders(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _save(other / "x.nii.gz", np.zeros((2, 3, 4)))
    with pytest.raises(PGPSInputError, match="no prediction has a reference label"):
        evaluate_folder(pred, other, {"organ": 1}, allow_missing=True)


def test_results_never_replace_a_file_pgps_did_not_write(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture):
    pred, ref = _folders(tmp_path)
    mine = pred / "summary.json"
    mine.write_text("my own notes")
    args = [str(pred), str(ref), "--labels", str(_ds(tmp_path))]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"pgps-evaluate: error: {mine}: exists and is not a pgps-evaluate result; "
                   "give another --json file or --overwrite to replace it"]
    assert mine.read_text() == "my own notes"
    assert main([*args, "--overwrite"]) == 0
    assert json.loads(mine.read_text())["tool"] == "pgps-evaluate"
    assert main(args) == 0  # its own result is replaced on a rerun
    assert [p.name for p in pred.iterdir() if p.name.startswith(".")] == []  # no temp left


class _ClosedPipe:
    """A stdout whose reader went away: every write raises BrokenPipeError."""

    encoding = "utf-8"

    def write(self, _text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        import io

        raise io.UnsupportedOperation("no file descriptor")


def test_closed_stdout_does_not_fail_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pred, ref = _folders(tmp_path)
    out = tmp_path / "res.json"
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main([str(pred), str(ref), "--labels", str(_ds(tmp_path)), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["per_case"].keys() == {"a", "b"}


def test_label_files_in_both_forms(tmp_path: Path):
    msd = tmp_path / "msd.json"
    msd.write_text(json.dumps({"labels": {"0": "background", "1": "organ", "2": "lesion"}}))
    labels = Labels.from_json_file(msd)
    assert labels.declared == {"background": 0, "organ": 1, "lesion": 2}
    assert labels.ignore_label is None
    nn = tmp_path / "nn.json"
    nn.write_text(json.dumps({"labels": {"background": 0, "both": [1, 2], "ignore": 3},
                              "regions_class_order": [1]}))
    labels = Labels.from_json_file(nn)
    assert labels.declared == {"background": 0, "both": [1, 2], "ignore": 3}
    assert labels.ignore_label == 3 and labels.scored() == {"both": [1, 2]}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"labels": {"organ": "x1"}}))
    with pytest.raises(PGPSInputError, match="bad.json: MSD label key 'organ'"):
        Labels.from_json_file(bad)


def test_nested_regions_with_ignore_by_hand():
    """BraTS-like regions (whole ⊃ core ⊃ enhancing) scored as unions, ignore left out."""
    labels = Labels({"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3],
                     "ignore": 4}, regions_class_order=[1, 2, 3])
    # index:             0  1  2  3  4  5  6  7
    pred = np.array([1, 2, 3, 3, 0, 1, 2, 0]).reshape(1, 1, 8)
    ref = np.array([1, 1, 3, 2, 0, 4, 4, 2]).reshape(1, 1, 8)
    scores = dice_scores(pred, ref, labels)  # voxels 5 and 6 are ignored
    # whole {1,2,3}: pred {0,1,2,3}, ref {0,1,2,3,7}: 2*4 / (4+5)
    assert scores["whole"] == pytest.approx(8 / 9)
    # core {2,3}: pred {1,2,3}, ref {2,3,7}: 2*2 / (3+3)
    assert scores["core"] == pytest.approx(4 / 6)
    # enhancing {3}: pred {2,3}, ref {2}: 2*1 / (2+1)
    assert scores["enhancing"] == pytest.approx(2 / 3)
    assert list(scores) == ["whole", "core", "enhancing"]
    # without the ignore label, voxels 5 and 6 count: whole pred gains 5 and 6
    plain = dice_scores(pred, ref, {k: v for k, v in labels.declared.items() if k != "ignore"})
    assert plain["whole"] == pytest.approx(8 / 11)


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
