"""pgps-synth's lesion benchmark preset: a strongly imbalanced lesion class of varied size
and contrast, held-out cases in a splits file, and the default draws left as they were."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pgps_data.cli.synth import main
from pgps_data.errors import PGPSInputError
from pgps_data.store.splits import load_splits
from pgps_data.synthetic.dataset import synthetic_case, write_synthetic_dataset
from pgps_data.synthetic.phantom import LESION_BENCHMARK


def _zyx(path: Path) -> np.ndarray:
    data = np.asanyarray(nib.load(path).dataobj)
    return data.transpose(2, 1, 0)


@pytest.fixture(scope="module")
def lesion_raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lesion") / "Task01_Lesion"
    assert main([str(out), "--preset", "lesion"]) == 0
    return out


def test_default_draws_are_unchanged():
    """The lesion options must not move the default phantom's random draws: this digest
    was computed before they existed (commit 4f224ee)."""
    h = hashlib.sha256()
    for n in (0, 1):
        c = synthetic_case(n, size=(24, 48, 48), channels=2, seed=3)
        for a in (*c.images, c.label, c.affine):
            h.update(a.tobytes())
    c = synthetic_case(2, size=(24, 48, 48), regions=True, ignore=True)
    for a in (*c.images, c.label):
        h.update(a.tobytes())
    assert h.hexdigest()[:16] == "c54e511afe891a79"


def test_preset_holds_out_24_labelled_cases(lesion_raw):
    meta = json.loads((lesion_raw / "dataset.json").read_text())
    ids = [Path(t["image"]).name.removesuffix(".nii.gz") for t in meta["training"]]
    assert len(ids) == 40 and meta["numTest"] == 0
    (fold,) = load_splits(lesion_raw / "splits_final.json", ids)
    assert len(fold["val"]) == 24 and not set(fold["val"]) & set(fold["train"])
    assert sorted(fold["train"] + fold["val"]) == sorted(ids)
    assert "budget=0.0005" in meta["description"]  # a rerun knows what it made


def test_lesions_rare_and_varied_in_size_and_contrast(lesion_raw):
    fractions, sizes, contrasts = [], [], []
    for label_path in sorted((lesion_raw / "labelsTr").glob("*.nii.gz")):
        label = _zyx(label_path)
        ct = _zyx(lesion_raw / "imagesTr" / label_path.name).astype(np.float64)
        lesion = label == 2
        fractions.append(lesion.mean())
        components, n = ndimage.label(lesion, structure=np.ones((3, 3, 3), bool))
        organ_mean = ct[label == 1].mean()
        for k in range(1, n + 1):
            voxels = components == k
            sizes.append(int(voxels.sum()))
            if voxels.sum() >= 8:  # the mean of a few noisy voxels says little
                contrasts.append(ct[voxels].mean() - organ_mean)
    assert max(fractions) <= LESION_BENCHMARK.budget + 1e-9  # <= 0.05 % of every case
    assert min(fractions) > 0  # every case has a lesion to find
    assert np.percentile(sizes, 90) >= 4 * np.percentile(sizes, 25)  # small and large ones
    assert np.percentile(contrasts, 90) - np.percentile(contrasts, 10) >= 35  # HU, dim to bright
    assert min(contrasts) > 10  # still brighter than the organ, never invisible


def test_held_out_must_leave_training_cases(tmp_path):
    with pytest.raises(PGPSInputError, match="held-out 3"):
        write_synthetic_dataset(tmp_path / "a", cases=3, held_out=3, size=(24, 48, 48))
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").rglob("*.nii.gz"))


def test_explicit_flags_override_the_preset(tmp_path, capsys):
    out = tmp_path / "small"
    assert main([str(out), "--preset", "lesion", "--cases", "5", "--held-out", "2",
                 "--size", "24", "48", "48"]) == 0
    assert "held out of training: the last 2" in capsys.readouterr().out
    assert len(json.loads((out / "splits_final.json").read_text())[0]["val"]) == 2
    assert len(list((out / "labelsTr").iterdir())) == 5
