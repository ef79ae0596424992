"""Layouts: MSD and nnU-Net v2 discovery, refusals that name the entry, and raising errors."""

from __future__ import annotations

import json
import os

import pytest

from pgps_data.errors import PGPSInputError
from pgps_data.labels import Labels
from pgps_data.raw.layouts import discover


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def _msd(root, training, test, modality=None):
    root.mkdir(parents=True, exist_ok=True)
    meta = {
        "name": "Task09_Spleen",
        "modality": modality or {"0": "CT"},
        "labels": {"0": "background", "1": "spleen"},
        "numTraining": len(training),
        "training": training,
        "test": test,
    }
    (root / "dataset.json").write_text(json.dumps(meta))


def test_msd_cases_labels_and_junk(tmp_path):
    root = tmp_path / "Task09"
    for n in (1, 2):
        _touch(root / f"imagesTr/spleen_{n}.nii.gz")
        _touch(root / f"labelsTr/spleen_{n}.nii.gz")
    _touch(root / "imagesTs/spleen_9.nii.gz")
    _touch(root / "imagesTr/._spleen_1.nii.gz")
    training = [
        {"image": f"./imagesTr/spleen_{n}.nii.gz", "label": f"./labelsTr/spleen_{n}.nii.gz"}
        for n in (1, 2)
    ] + [{"image": "./imagesTr/._spleen_1.nii.gz", "label": "./labelsTr/._spleen_1.nii.gz"}]
    _msd(root, training, ["./imagesTs/spleen_9.nii.gz"], modality={"0": "ct"})
    spec = discover(root)
    assert spec.layout == "msd" and spec.name == "Task09_Spleen"
    assert [c.case_id for c in spec.training] == ["spleen_1", "spleen_2"]
    assert spec.training[0].label_path.endswith("labelsTr/spleen_1.nii.gz")
    assert [c.case_id for c in spec.test] == ["spleen_9"] and spec.test[0].is_test
    assert spec.test[0].label_path is None
    assert spec.label_set == Labels({"background": 0, "spleen": 1})
    assert spec.labels == {"background": 0, "spleen": 1}  # the view raw/convert.py writes
    assert spec.label_values == [0, 1] and spec.ignore_label is None
    assert spec.modalities == ["CT"] and spec.channel_names == ["ct"]
    assert spec.problems == []


def test_msd_refuses_escapes_missing_and_duplicates(tmp_path):
    root = tmp_path / "ds"
    outside = tmp_path / "secret.nii.gz"
    _touch(outside)
    for name in ("a", "b", "dup"):
        _touch(root / f"imagesTr/{name}.nii.gz")
        _touch(root / f"labelsTr/{name}.nii.gz")
    _touch(root / "other/dup.nii.gz")
    os.symlink(outside, root / "imagesTr/link.nii.gz")
    _touch(root / "labelsTr/link.nii.gz")
    _touch(root / "imagesTs/a.nii.gz")
    training = [
        {"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"},
        {"image": "../secret.nii.gz", "label": "labelsTr/b.nii.gz"},
        {"image": str(outside), "label": "labelsTr/b.nii.gz"},
        {"image": "imagesTr/link.nii.gz", "label": "labelsTr/link.nii.gz"},
        {"image": "imagesTr/gone.nii.gz", "label": "labelsTr/b.nii.gz"},
        {"image": "imagesTr/dup.nii.gz", "label": "labelsTr/dup.nii.gz"},
        {"image": "other/dup.nii.gz", "label": "labelsTr/dup.nii.gz"},
    ]
    _msd(root, training, ["imagesTs/a.nii.gz"])
    spec = discover(root)
    # a symlink inside the folder is followed wherever it points (nnU-Net datasets are
    # built from them); only the entry's own text may not leave the folder
    assert [c.case_id for c in spec.training] == ["a", "link"]
    assert spec.symlinked_cases == 1
    assert spec.test == []  # id 'a' is a training case: the test case is refused
    text = "\n".join(spec.problems)
    assert "training[1]" in text and "'../secret.nii.gz' points outside" in text
    assert "training[2]" in text
    assert "training[3]" not in text
    assert "training[4]" in text and "missing" in text
    assert "'dup' is used by 2" in text and "other/dup.nii.gz" in text
    assert "also a training case" in text
    assert all("\n" not in p for p in spec.problems)


def _nnunet(root, meta_extra=None):
    root.mkdir(parents=True, exist_ok=True)
    meta = {
        "channel_names": {"0": "T2", "1": "ADC"},
        "labels": {"background": 0, "whole": [1, 2], "core": 2, "ignore": 3},
        "regions_class_order": [1, 2],
        "numTraining": 3,
        "file_ending": ".nrrd",
    }
    meta.update(meta_extra or {})
    (root / "dataset.json").write_text(json.dumps(meta))


def test_nnunet_layout_channels_regions_ignore(tmp_path):
    root = tmp_path / "Dataset002_Prostate"
    for case in ("p1", "p2", "p3"):
        for ch in (0, 1):
            if case == "p3" and ch == 1:
                continue  # p3 lacks its second channel
            _touch(root / f"imagesTr/{case}_{ch:04d}.nrrd")
        if case != "p2":
            _touch(root / f"labelsTr/{case}.nrrd")
    _touch(root / "labelsTr/orphan.nrrd")
    _touch(root / "imagesTs/t1_0000.nrrd")
    _touch(root / "imagesTs/t1_0001.nrrd")
    _touch(root / "imagesTr/._p1_0000.nrrd")
    _nnunet(root)
    spec = discover(root)
    assert spec.layout == "nnunet" and spec.name == "Dataset002_Prostate"
    assert [c.case_id for c in spec.training] == ["p1"]
    assert [os.path.basename(p) for p in spec.training[0].image_paths] == [
        "p1_0000.nrrd",
        "p1_0001.nrrd",
    ]
    assert [c.case_id for c in spec.test] == ["t1"] and spec.test[0].label_path is None
    labels = spec.label_set
    assert labels.has_regions and labels.regions == [(1, 2), (2,)]
    assert labels.ignore_label == 3 and labels.regions_class_order == [1, 2]
    assert labels.all_values == [0, 1, 2, 3] and labels.foreground_values == [1, 2]
    assert spec.label_values == [0, 1, 2, 3] and spec.labels["whole"] == [1, 2]
    assert spec.modalities == ["T2", "ADC"]
    text = "\n".join(spec.problems)
    assert "p2" in text and "labelsTr/p2.nrrd" in text and "missing" in text
    assert "p3" in text and "missing channel" in text
    assert any("orphan.nrrd" in w for w in spec.warnings)
    assert any("numTraining is 3" in w for w in spec.warnings)


def test_nnunet_explicit_dataset_dict_is_checked(tmp_path):
    root = tmp_path / "ds"
    _touch(root / "imagesTr/a_0000.nrrd")
    _touch(root / "labelsTr/a.nrrd")
    dataset = {
        "a": {"images": ["imagesTr/a_0000.nrrd"], "label": "labelsTr/a.nrrd"},
        "b": {"images": ["/etc/passwd"], "label": "labelsTr/a.nrrd"},
    }
    _nnunet(root, {"channel_names": {"0": "CT"}, "dataset": dataset, "numTraining": 2})
    spec = discover(root)
    assert [c.case_id for c in spec.training] == ["a"] and spec.modalities == ["CT"]
    assert any("dataset['b']" in p and "outside" in p for p in spec.problems)


def test_bad_dataset_json_raises_one_line(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    with pytest.raises(PGPSInputError, match="dataset.json: missing"):
        discover(root)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(PGPSInputError, match="not valid JSON") as err:
        discover(root)
    assert "\n" not in str(err.value)
    (root / "dataset.json").write_text(json.dumps({"name": "x", "labels": {}}))
    with pytest.raises(PGPSInputError, match="neither MSD"):
        discover(root)
    _nnunet(root, {"labels": {"background": 0, "bad": "one"}})
    with pytest.raises(PGPSInputError, match="'bad' must be an integer"):
        discover(root)


def test_regions_need_one_class_order_value_each(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    for extra, words in [({"regions_class_order": None}, "region labels need 'regions_class_order'"),
                         ({"regions_class_order": [1, 2, 3]},
                          "has 3 value(s) but the labels declare 2 region(s) (whole, core)")]:
        _nnunet(root, extra)
        with pytest.raises(PGPSInputError) as err:
            discover(root)
        assert str(err.value).startswith(str(root / "dataset.json")) and words in str(err.value)
    # one-value lists alone are plain labels (nnU-Net's rule): no order needed
    _nnunet(root, {"labels": {"background": 0, "organ": [1], "lesion": 2},
                   "regions_class_order": None})
    spec = discover(root)
    assert not spec.label_set.has_regions and spec.label_set.output_channels == [0, 1, 2]
