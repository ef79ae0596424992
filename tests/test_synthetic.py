"""The phantom generator: layouts, determinism, geometry, label statistics, readers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from pgps_data.cli.synth import main
from pgps_data.errors import PGPSInputError
from pgps_data.synthetic.dataset import case_spacing, synthetic_case, write_synthetic_dataset

SIZE = (24, 48, 48)


def _hashes(root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


def _zyx(path: Path) -> np.ndarray:
    """A NIfTI's data as (Z, Y, X[, C]): nibabel indexes [i, j, k], we use [k, j, i]."""
    data = np.asanyarray(nib.load(path).dataobj)
    return data.transpose(2, 1, 0, *range(3, data.ndim))


@pytest.fixture(scope="module")
def msd(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("msd") / "ds", cases=3,
                                   test_cases=1, size=SIZE, seed=7)


def test_msd_layout_and_dataset_json(msd):
    meta = json.loads((msd / "dataset.json").read_text())
    assert set(meta) >= {"name", "description", "tensorImageSize", "modality", "labels",
                         "numTraining", "numTest", "training", "test"}
    assert meta["tensorImageSize"] == "3D" and meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
    assert meta["numTraining"] == 3 and meta["numTest"] == 1
    assert meta["training"][0] == {"image": "./imagesTr/synth_000.nii.gz",
                                   "label": "./labelsTr/synth_000.nii.gz"}
    assert meta["test"] == ["./imagesTs/synth_100.nii.gz"]
    for entry in meta["training"]:
        assert (msd / entry["image"]).is_file() and (msd / entry["label"]).is_file()
    assert (msd / meta["test"][0]).is_file()
    assert sorted(p.name for p in (msd / "imagesTr").iterdir()) == [
        f"synth_00{i}.nii.gz" for i in range(3)]
    img = nib.load(msd / "imagesTr" / "synth_000.nii.gz")
    assert img.get_data_dtype() == np.int16
    assert nib.load(msd / "labelsTr" / "synth_000.nii.gz").get_data_dtype() == np.uint8


def test_nifti_matches_in_memory_case_and_both_readers_agree(msd):
    median = np.median([synthetic_case(i, size=SIZE, seed=7).spacing for i in range(3)], 0)
    case = synthetic_case(1, size=SIZE, seed=7, median_spacing=median)
    path = msd / "imagesTr" / "synth_001.nii.gz"
    np.testing.assert_array_equal(_zyx(path), case.images[0])
    np.testing.assert_array_equal(_zyx(msd / "labelsTr" / "synth_001.nii.gz"), case.label)
    np.testing.assert_allclose(nib.load(path).affine, case.affine, atol=1e-4)
    itk = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(itk), case.images[0])
    np.testing.assert_allclose(itk.GetSpacing()[::-1], case.spacing, rtol=1e-6)


def test_geometry_per_case_anisotropic_oblique(msd):
    spacings, shapes = [], []
    for p in sorted((msd / "imagesTr").glob("*.nii.gz")) + sorted(
            (msd / "imagesTs").glob("*.nii.gz")):
        img = nib.load(p)
        spacings.append(img.header.get_zooms()[::-1])
        shapes.append(img.shape[::-1])
        rot = img.affine[:3, :3] / np.asarray(img.header.get_zooms())
        assert np.abs(rot - np.diag(np.diag(rot))).max() > 1e-3  # oblique, not axis-aligned
        assert np.allclose(rot.T @ rot, np.eye(3), atol=1e-5)
        assert np.abs(img.affine[:3, 3]).min() > 1  # origin away from zero
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    spacings = np.array(spacings)
    assert len({tuple(s) for s in spacings}) == len(spacings)
    assert np.all(spacings[:, 0] > 1.4 * spacings[:, 1])  # z coarser than in-plane
    assert np.all((1.5 <= spacings[:, 0]) & (spacings[:, 0] <= 3.0))
    assert np.all((0.6 <= spacings[:, 1:]) & (spacings[:, 1:] <= 0.9))
    shapes = np.array(shapes)
    assert np.all(np.abs(shapes / np.array(SIZE) - 1) < 0.6) and len(set(map(tuple, shapes))) > 1


def test_label_statistics_lesions_inside_organ_and_brighter(msd):
    for i in range(3):
        label = _zyx(msd / "labelsTr" / f"synth_00{i}.nii.gz")
        ct = _zyx(msd / "imagesTr" / f"synth_00{i}.nii.gz").astype(np.float32)
        lesion = label == 2
        assert 0.02 <= (label >= 1).mean() <= 0.04
        assert 0 < lesion.mean() <= 0.001
        shell = ndimage.binary_dilation(lesion) & ~lesion
        assert np.all(label[shell] == 1)  # every lesion is surrounded by organ
        assert ct[lesion].mean() > ct[label == 1].mean() + 30 > ct[label == 0].mean() + 30
        assert set(np.unique(label)) == {0, 1, 2}


def test_zero_margin_air_and_body(msd):
    ct = _zyx(msd / "imagesTr" / "synth_000.nii.gz")
    assert np.all(ct[-1] == 0)  # top slab outside the field of view
    nz = np.argwhere(ct != 0)
    lo, hi = nz.min(0), nz.max(0) + 1
    assert np.count_nonzero((lo > 0) | (hi < ct.shape)) == 3  # every axis loses a margin
    assert np.prod(hi - lo) < 0.9 * ct.size  # crop-to-nonzero really crops
    fov = ct[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    assert (fov < -900).mean() > 0.1 and ((fov > 0) & (fov < 100)).mean() > 0.2


def test_same_seed_same_bytes_other_seed_differs(tmp_path, msd):
    again = write_synthetic_dataset(tmp_path / "again", cases=3, test_cases=1, size=SIZE,
                                    seed=7)
    assert _hashes(again) == _hashes(msd)
    other = write_synthetic_dataset(tmp_path / "other", cases=3, test_cases=1, size=SIZE,
                                    seed=8)
    a, b = _hashes(msd), _hashes(other)
    assert all(a[k] != b[k] for k in a if k != "dataset.json")


def test_msd_two_channels_is_one_4d_nifti(tmp_path):
    out = write_synthetic_dataset(tmp_path / "ds", cases=2, test_cases=1, size=SIZE,
                                  channels=2, seed=1)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["tensorImageSize"] == "4D" and meta["modality"] == {"0": "CT", "1": "MR"}
    img = nib.load(out / "imagesTr" / "synth_000.nii.gz")
    assert img.ndim == 4 and img.shape[-1] == 2
    data = _zyx(out / "imagesTr" / "synth_000.nii.gz")
    label = _zyx(out / "labelsTr" / "synth_000.nii.gz")
    assert data.shape[:3] == label.shape
    ct, mr = data[..., 0], data[..., 1]
    assert ct.min() < -900 and np.all(mr >= 0) and mr.max() > 100
    assert np.all(mr[ct < -500] == 0)  # MR background (air, outside FOV) is zero
    assert mr[label == 2].mean() > mr[label == 1].mean()
    means = [_zyx(out / "imagesTr" / f"synth_00{i}.nii.gz")[..., 1] for i in range(2)]
    assert abs(means[0][means[0] > 0].mean() / means[1][means[1] > 0].mean() - 1) > 0.05


def test_nnunet_layout_two_channels(tmp_path):
    out = write_synthetic_dataset(tmp_path / "nn", cases=2, test_cases=1, size=SIZE,
                                  channels=2, layout="nnunet", seed=2)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT", "1": "MR"}
    assert meta["labels"] == {"background": 0, "organ": 1, "lesion": 2}
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        "synth_000_0000.nii.gz", "synth_000_0001.nii.gz",
        "synth_001_0000.nii.gz", "synth_001_0001.nii.gz"]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [
        "synth_000.nii.gz", "synth_001.nii.gz"]
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == [
        "synth_100_0000.nii.gz", "synth_100_0001.nii.gz"]
    assert nib.load(out / "imagesTr" / "synth_000_0000.nii.gz").get_data_dtype() == np.int16
    assert nib.load(out / "imagesTr" / "synth_000_0001.nii.gz").get_data_dtype() == np.float32


def test_nnunet_ignore_and_regions(tmp_path):
    """BraTS-like: values 1 organ, 2 core shell, 3 lesion nest as whole ⊃ core ⊃ enhancing;
    the ignore label is 4, above every other value (as nnU-Net requires)."""
    out = write_synthetic_dataset(tmp_path / "nn", cases=2, test_cases=0, size=SIZE,
                                  layout="nnunet", ignore=True, regions=True, seed=3)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "whole": [1, 2, 3], "core": [2, 3],
                              "enhancing": [3], "ignore": 4}
    assert meta["regions_class_order"] == [1, 2, 3]
    plain = write_synthetic_dataset(tmp_path / "plain", cases=2, test_cases=0, size=SIZE,
                                    layout="nnunet", seed=3)
    spacing = np.array(case_spacing(3, 0))
    for i in range(2):
        label = _zyx(out / "labelsTr" / f"synth_00{i}.nii.gz")
        assert set(np.unique(label)) == {0, 1, 2, 3, 4}
        ignored = np.flatnonzero((label == 4).all(axis=(1, 2)))
        assert ignored.size > 0  # whole axial slabs, nothing else, are unannotated
        np.testing.assert_array_equal((label == 4).any(axis=(1, 2)), (label == 4).all(axis=(1, 2)))
        core_z = np.flatnonzero(np.isin(label, [2, 3]).any(axis=(1, 2)))
        assert np.abs(ignored[:, None] - core_z[None]).min() >= 2  # away from lesion and core
        # the lesions are the plain dataset's lesions (label 2 there), and the core shell
        # is organ within 2.5 mm of them: outside the ignore slabs the organ is the same
        same = _zyx(plain / "labelsTr" / f"synth_00{i}.nii.gz")
        annotated = label != 4
        np.testing.assert_array_equal((label == 3)[annotated], (same == 2)[annotated])
        np.testing.assert_array_equal((label > 0)[annotated], (same > 0)[annotated])
        if i == 0:  # the shell by hand: organ voxels within 2.5 mm of a lesion voxel
            dist = ndimage.distance_transform_edt(same != 2, sampling=spacing)
            shell = (same == 1) & (dist <= 2.5)
            np.testing.assert_array_equal((label == 2)[annotated], shell[annotated])
            assert shell.any()
    assert not list((out / "imagesTs").iterdir())


def test_nnunet_ignore_without_regions(tmp_path):
    out = write_synthetic_dataset(tmp_path / "nn", cases=1, test_cases=0, size=SIZE,
                                  layout="nnunet", ignore=True)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "organ": 1, "lesion": 2, "ignore": 3}
    assert "regions_class_order" not in meta


def test_msd_ignore_label(tmp_path):
    out = write_synthetic_dataset(tmp_path / "ds", cases=1, test_cases=0, size=SIZE,
                                  ignore=True, seed=5)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "organ", "2": "lesion", "3": "ignore"}
    assert set(np.unique(_zyx(out / "labelsTr" / "synth_000.nii.gz"))) == {0, 1, 2, 3}


@pytest.mark.parametrize("ending", [".nrrd", ".mha"])
def test_simpleitk_endings_round_trip(tmp_path, ending):
    out = write_synthetic_dataset(tmp_path / "nn", cases=2, test_cases=0, size=SIZE,
                                  layout="nnunet", file_ending=ending, seed=4)
    assert json.loads((out / "dataset.json").read_text())["file_ending"] == ending
    median = np.median([synthetic_case(i, size=SIZE, seed=4).spacing for i in range(2)], 0)
    case = synthetic_case(1, size=SIZE, seed=4, median_spacing=median)
    img = sitk.ReadImage(str(out / "imagesTr" / f"synth_001_0000{ending}"))
    lab = sitk.ReadImage(str(out / "labelsTr" / f"synth_001{ending}"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), case.images[0])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(lab), case.label)
    assert sitk.GetArrayFromImage(img).dtype == np.int16
    assert sitk.GetArrayFromImage(lab).dtype == np.uint8
    np.testing.assert_allclose(img.GetSpacing()[::-1], case.spacing, rtol=1e-6)
    # same geometry as the NIfTI affine: LPS direction/origin back to RAS
    lps = np.diag([-1.0, -1.0, 1.0])
    direction = np.array(img.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(lps @ direction * np.array(img.GetSpacing()),
                               case.affine[:3, :3], atol=1e-6)
    np.testing.assert_allclose(lps @ np.array(img.GetOrigin()), case.affine[:3, 3], atol=1e-6)
    again = write_synthetic_dataset(tmp_path / "again", cases=2, test_cases=0, size=SIZE,
                                    layout="nnunet", file_ending=ending, seed=4)
    assert _hashes(again) == _hashes(out)


def test_rerun_replaces_old_cases_and_refuses_foreign_dirs(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main([str(out), "--cases", "3", "--test-cases", "1", "--size", *map(str, SIZE)]) == 0
    assert "wrote 3 training + 1 test" in capsys.readouterr().out
    assert main([str(out), "--cases", "2", "--test-cases", "0", "--size", *map(str, SIZE),
                 "--layout", "nnunet", "--file-ending", ".mha"]) == 0
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        "synth_000_0000.mha", "synth_001_0000.mha"]
    assert not list((out / "imagesTs").iterdir())
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main([str(foreign), "--size", *map(str, SIZE)]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and err.count("\n") == 1
    assert (foreign / "notes.txt").read_text() == "mine"


def test_bad_arguments_raise_input_errors(tmp_path):
    with pytest.raises(PGPSInputError, match="layout nnunet"):
        write_synthetic_dataset(tmp_path / "a", size=SIZE, file_ending=".nrrd")
    with pytest.raises(PGPSInputError, match="layout nnunet"):
        write_synthetic_dataset(tmp_path / "a", size=SIZE, regions=True)
    with pytest.raises(PGPSInputError, match="size"):
        write_synthetic_dataset(tmp_path / "a", size=(4, 48, 48))
    with pytest.raises(PGPSInputError, match="organ fraction"):
        synthetic_case(0, size=SIZE, organ_fraction=0.9)
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0


def test_in_memory_case_is_seeded():
    a, b = synthetic_case(5, size=SIZE, seed=1), synthetic_case(5, size=SIZE, seed=1)
    c = synthetic_case(5, size=SIZE, seed=2)
    assert a.case_id == "synth_005" and a.image.shape == (1, *a.label.shape)
    np.testing.assert_array_equal(a.images[0], b.images[0])
    np.testing.assert_array_equal(a.affine, b.affine)
    assert a.label.shape != c.label.shape or not np.array_equal(a.label, c.label)
    two = synthetic_case(5, size=SIZE, seed=1, channels=2)
    assert two.image.shape == (2, *two.label.shape) and two.images[1].dtype == np.float32
