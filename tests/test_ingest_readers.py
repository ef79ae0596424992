"""Readers: axis order, affine, spacing, faithful re-export, and one-line errors."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pgps_data.errors import PGPSInputError
from pgps_data.raw.readers import check_finite, geometry_dict, read_volume, write_volume

AFFINE = np.array(
    [[-0.8, 0.0, 0.0, 90.0], [0.0, 0.7, 0.1, -120.0], [0.0, 0.0, 2.5, -40.0], [0, 0, 0, 1]]
)


def _nifti(path, data, affine=AFFINE, qcode=1, scode=2):
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=qcode)
    img.set_sform(affine, code=scode)
    nib.save(img, str(path))
    return img


def test_nifti_axes_affine_spacing(tmp_path):
    ijk = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # (i, j, k)
    _nifti(tmp_path / "a.nii.gz", ijk)
    vol = read_volume(tmp_path / "a.nii.gz")
    assert vol.data.shape == (6, 5, 4)  # (Z, Y, X) = (k, j, i)
    assert vol.data[3, 2, 1] == ijk[1, 2, 3]
    np.testing.assert_allclose(vol.affine, nib.load(str(tmp_path / "a.nii.gz")).affine)
    zooms = nib.load(str(tmp_path / "a.nii.gz")).header.get_zooms()
    assert vol.spacing == pytest.approx((zooms[2], zooms[1], zooms[0]))


def test_nifti_4d_channels_last_become_first(tmp_path):
    data = np.random.default_rng(0).normal(size=(4, 5, 6, 2)).astype(np.float32)
    _nifti(tmp_path / "mc.nii.gz", data)
    vol = read_volume(tmp_path / "mc.nii.gz", channels=2)
    assert vol.data.shape == (2, 6, 5, 4)
    np.testing.assert_array_equal(vol.data[1], data[..., 1].transpose(2, 1, 0))
    with pytest.raises(PGPSInputError, match="declares 3") as err:
        read_volume(tmp_path / "mc.nii.gz", channels=3)
    assert "mc.nii.gz" in str(err.value) and "\n" not in str(err.value)


def test_singleton_last_axis_reads_as_3d(tmp_path):
    _nifti(tmp_path / "s.nii.gz", np.ones((4, 5, 6, 1), np.uint8))
    assert read_volume(tmp_path / "s.nii.gz", channels=1).data.shape == (6, 5, 4)


def test_itk_affine_is_ras_and_matches_nibabel(tmp_path):
    """The same geometry written by ITK (LPS) and by nibabel (RAS) reads identically."""
    arr = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)  # (k, j, i)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.7, 2.5))
    img.SetOrigin((-90.0, 120.0, -40.0))  # LPS
    img.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(img, str(tmp_path / "a.nrrd"))
    sitk.WriteImage(img, str(tmp_path / "a_itk.nii.gz"))
    via_itk = read_volume(tmp_path / "a.nrrd")
    via_nib = read_volume(tmp_path / "a_itk.nii.gz")
    np.testing.assert_array_equal(via_itk.data, arr)
    np.testing.assert_array_equal(via_nib.data, arr)
    np.testing.assert_allclose(via_itk.affine, via_nib.affine, atol=1e-5)
    assert via_itk.spacing == pytest.approx((2.5, 0.7, 0.8))


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".mha"])
def test_write_volume_round_trip_keeps_geometry(tmp_path, ending):
    src = tmp_path / f"src{ending}"
    data = np.random.default_rng(1).integers(0, 3, size=(7, 6, 5)).astype(np.uint8)  # (Z,Y,X)
    if ending == ".nii.gz":
        _nifti(src, data.transpose(2, 1, 0), qcode=1, scode=4)
    else:
        img = sitk.GetImageFromArray(data)
        img.SetSpacing((0.9, 0.8, 3.0))
        img.SetOrigin((1.0, 2.0, 3.0))
        img.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
        sitk.WriteImage(img, str(src))
    vol = read_volume(src)
    geo = geometry_dict(vol)
    geo = json.loads(json.dumps(geo))  # must survive JSON
    out = tmp_path / f"out{ending}"
    write_volume(out, vol.data[::-1].copy(), geo, np.uint8)
    back = read_volume(out)
    np.testing.assert_array_equal(back.data, vol.data[::-1])
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    assert back.data.dtype == np.uint8
    if ending == ".nii.gz":
        a, b = nib.load(str(src)), nib.load(str(out))
        assert int(b.header["qform_code"]) == 1 and int(b.header["sform_code"]) == 4
        np.testing.assert_allclose(b.get_qform(), a.get_qform(), atol=1e-5)
        np.testing.assert_allclose(b.header.get_zooms(), a.header.get_zooms(), atol=1e-6)


def test_write_across_families(tmp_path):
    """A NIfTI geometry written as NRRD (and back) keeps the RAS affine."""
    _nifti(tmp_path / "a.nii.gz", np.zeros((4, 5, 6), np.uint8))
    vol = read_volume(tmp_path / "a.nii.gz")
    geo = geometry_dict(vol)
    write_volume(tmp_path / "b.nrrd", vol.data, geo)
    np.testing.assert_allclose(read_volume(tmp_path / "b.nrrd").affine, vol.affine, atol=1e-4)


def test_truncated_gzip_is_one_line_error(tmp_path):
    data = np.random.default_rng(0).normal(size=(30, 30, 30)).astype(np.float32)
    _nifti(tmp_path / "t.nii.gz", data)
    blob = (tmp_path / "t.nii.gz").read_bytes()
    (tmp_path / "t.nii.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(PGPSInputError) as err:
        read_volume(tmp_path / "t.nii.gz")
    msg = str(err.value)
    assert "t.nii.gz" in msg and "\n" not in msg and "truncated" in msg


def test_corrupt_and_unknown_and_2d(tmp_path):
    (tmp_path / "c.nii.gz").write_bytes(gzip.compress(b"not a nifti at all" * 30))
    with pytest.raises(PGPSInputError, match="c.nii.gz"):
        read_volume(tmp_path / "c.nii.gz")
    (tmp_path / "c.nrrd").write_bytes(b"NRRD0004\nbroken\n")
    with pytest.raises(PGPSInputError, match="c.nrrd"):
        read_volume(tmp_path / "c.nrrd")
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    with pytest.raises(PGPSInputError, match="unknown file type"):
        read_volume(tmp_path / "x.png")
    _nifti(tmp_path / "flat.nii.gz", np.zeros((8, 9), np.float32))
    with pytest.raises(PGPSInputError, match="2D"):
        read_volume(tmp_path / "flat.nii.gz")
    with pytest.raises(PGPSInputError, match="not found"):
        read_volume(tmp_path / "nope.nii.gz")


def test_check_finite(tmp_path):
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    _nifti(tmp_path / "n.nii.gz", data)
    vol = read_volume(tmp_path / "n.nii.gz")
    with pytest.raises(PGPSInputError, match=r"n\.nii\.gz: 2 voxel"):
        check_finite(vol)
    vol.data = np.nan_to_num(vol.data, posinf=0.0)
    check_finite(vol)  # clean data passes
