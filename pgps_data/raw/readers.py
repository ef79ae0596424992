"""Reading and writing volumes: NIfTI through nibabel, NRRD/MHA/MHD through SimpleITK.

Arrays come out as (Z, Y, X) = the file's voxel axes slowest-first (k, j, i), or
(C, Z, Y, X) for a 4D file whose last axis holds channels. ``Volume.affine`` is the 4x4
RAS affine mapping (i, j, k, 1) to mm as nibabel reports it; for ITK files it is built
from origin/spacing/direction (LPS) and flipped to RAS. :func:`geometry_dict` keeps what
is needed to write a prediction back with the input's exact geometry
(:func:`write_volume`): the NIfTI qform/sform and their codes, or the ITK origin,
spacing and direction.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pgps_data.errors import PGPSInputError

NIFTI_ENDINGS = (".nii.gz", ".nii")
ITK_ENDINGS = (".nrrd", ".nhdr", ".mha", ".mhd")
ENDINGS = NIFTI_ENDINGS + ITK_ENDINGS
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Volume:
    """One image file in memory: data (Z, Y, X) or (C, Z, Y, X), affine, spacing (Z, Y, X)."""

    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    path: str
    header: dict[str, Any] | None = None  # format-specific geometry for faithful re-export


def file_ending(path: str | Path) -> str | None:
    """The recognised ending of ``path`` (``".nii.gz"``, ``".nrrd"``...), or None."""
    name = Path(path).name.lower()
    return next((e for e in ENDINGS if name.endswith(e)), None)


def read_volume(path: str | Path, channels: int | None = None) -> Volume:
    """Read a 3D or 4D (channels last) volume fully into memory.

    ``channels``: the channel count the dataset declares; a 3D file satisfies 1, a 4D file
    must carry exactly that many on its last axis. Trailing singleton axes are dropped, so
    (x, y, z, 1) reads as 3D. Raises PGPSInputError (one line, naming the file) for an
    unknown ending, an unreadable/truncated/corrupt file, a 2D file, a wrong channel count.
    """
    path = str(path)
    ending = file_ending(path)
    if ending is None:
        raise PGPSInputError(f"{path}: unknown file type (expected one of {', '.join(ENDINGS)})")
    if not Path(path).is_file():
        if Path(path).is_symlink() and not Path(path).exists():
            raise PGPSInputError(
                f"{path}: dangling symlink -> {os.readlink(path)} (its target does not exist)"
            )
        raise PGPSInputError(f"{path}: file not found")
    if ending in NIFTI_ENDINGS:
        vol = _read_nifti(path)
    else:
        vol = _read_itk(path)
    data = vol.data
    if data.ndim < 3:
        raise PGPSInputError(f"{path}: is a {data.ndim}D image; 3D volumes are required")
    if data.ndim > 4:
        raise PGPSInputError(f"{path}: has {data.ndim} dimensions {data.shape}; expected 3D or 4D")
    if channels is not None:
        found = 1 if data.ndim == 3 else data.shape[0]
        if found != channels:
            raise PGPSInputError(
                f"{path}: has {found} channel(s) on its last axis, dataset.json declares "
                f"{channels} (fix the file or the channel list)"
            )
        if channels == 1 and data.ndim == 4:
            vol.data = data[0]
    return vol


def check_finite(volume: Volume) -> None:
    """Raise PGPSInputError if the volume holds NaN or Inf intensities."""
    data = volume.data
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise PGPSInputError(
            f"{volume.path}: {bad} voxel(s) are NaN or Inf (fix or replace these intensities)"
        )


def geometry_dict(volume: Volume) -> dict[str, Any]:
    """JSON-ready geometry of a volume: enough to write a prediction back exactly.

    ``{"affine": 4x4, "spacing": [z, y, x], "shape": [Z, Y, X], "format": "nifti"|"itk",
    "nifti": {...}}`` or ``"itk": {"origin", "spacing", "direction"}`` (ITK order x, y, z).
    """
    shape = [int(s) for s in volume.data.shape[-3:]]
    geo: dict[str, Any] = {
        "affine": [[float(v) for v in row] for row in np.asarray(volume.affine)],
        "spacing": [float(s) for s in volume.spacing],
        "shape": shape,
    }
    header = volume.header or {}
    if "nifti" in header:
        geo["format"] = "nifti"
        geo["nifti"] = header["nifti"]
    else:
        geo["format"] = "itk"
        geo["itk"] = header.get("itk") or _itk_from_affine(np.asarray(volume.affine))
    return geo


def write_volume(
    path: str | Path, data: np.ndarray, geometry: dict[str, Any], dtype: Any = np.uint8
) -> None:
    """Write a (Z, Y, X) array with the geometry recorded by :func:`geometry_dict`.

    NIfTI endings go through nibabel (same qform/sform and codes, zooms, units); the ITK
    endings through SimpleITK (same origin, spacing, direction). Geometry from one family
    written to the other is converted through the RAS affine.
    """
    path = str(path)
    data = np.asarray(data)
    if data.ndim != 3 or [int(s) for s in data.shape] != list(geometry["shape"]):
        raise ValueError(f"data shape {data.shape} != geometry shape {geometry['shape']}")
    data = data.astype(dtype, copy=False)
    ending = file_ending(path)
    if ending is None:
        raise PGPSInputError(f"{path}: unknown output file type (use one of {', '.join(ENDINGS)})")
    if ending in NIFTI_ENDINGS:
        _write_nifti(path, data, geometry)
    else:
        _write_itk(path, data, geometry)


# ------------------------------------------------------------------------------ NIfTI


def _read_nifti(path: str) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(path)
        arr = np.asanyarray(img.dataobj)  # reads everything: truncation shows up here
        hdr = img.header
        zooms = [float(z) for z in hdr.get_zooms()[:3]]
        qform, qcode = img.get_qform(coded=True)
        sform, scode = img.get_sform(coded=True)
        affine = np.asarray(img.affine, dtype=np.float64)
        version = 2 if isinstance(img, nib.Nifti2Image) else 1
        units = hdr.get_xyzt_units()
    except (EOFError, OSError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise PGPSInputError(
            f"{path}: cannot read ({_short(exc)}); the file is truncated or corrupt"
        ) from exc
    except Exception as exc:  # any decoder failure is a bad file
        raise PGPSInputError(f"{path}: cannot read ({_short(exc)})") from exc
    if arr.ndim < 3:
        raise PGPSInputError(f"{path}: is a {arr.ndim}D image; 3D volumes are required")
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 5 and arr.shape[3] == 1:  # (x, y, z, t=1, c): NIfTI vector intent
        arr = arr[:, :, :, 0]
    data = np.ascontiguousarray(arr.transpose(tuple(range(arr.ndim))[::-1]))
    nifti = {
        "version": version,
        "qform": None if qform is None else _lists(qform),
        "qform_code": int(qcode),
        "sform": None if sform is None else _lists(sform),
        "sform_code": int(scode),
        "zooms": zooms,
        "xyzt_units": [units[0], units[1]],
    }
    spacing = (zooms[2], zooms[1], zooms[0])
    return Volume(data, affine, spacing, path, {"nifti": nifti})


def _write_nifti(path: str, data: np.ndarray, geometry: dict[str, Any]) -> None:
    import nibabel as nib

    arr = np.ascontiguousarray(data.transpose(2, 1, 0))
    nifti = geometry.get("nifti")
    affine = np.asarray(geometry["affine"], dtype=np.float64)
    if nifti is None:  # geometry from an ITK file: plain affine, scanner-anatomical codes
        img = nib.Nifti1Image(arr, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    else:
        cls = nib.Nifti2Image if nifti.get("version") == 2 else nib.Nifti1Image
        img = cls(arr, None)
        q = nifti.get("qform")
        s = nifti.get("sform")
        img.set_qform(np.asarray(q) if q is not None else None, code=int(nifti["qform_code"]))
        img.set_sform(np.asarray(s) if s is not None else None, code=int(nifti["sform_code"]))
        img.header.set_zooms(tuple(nifti["zooms"]))
        units = nifti.get("xyzt_units") or ["mm", "sec"]
        img.header.set_xyzt_units(*units)
        if q is None and s is None:
            img.set_sform(affine, code=2)
    img.set_data_dtype(data.dtype)
    img.header["scl_slope"] = 1.0
    img.header["scl_inter"] = 0.0
    nib.save(img, path)


# -------------------------------------------------------------------------------- ITK


def _read_itk(path: str) -> Volume:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(path)
        arr = sitk.GetArrayFromImage(img)
    except Exception as exc:  # ITK raises RuntimeError for all
        raise PGPSInputError(
            f"{path}: cannot read ({_short(exc)}); the file is truncated or corrupt"
        ) from exc
    dim = img.GetDimension()
    if dim < 3:
        raise PGPSInputError(f"{path}: is a {dim}D image; 3D volumes are required")
    spacing_itk = [float(s) for s in img.GetSpacing()[:3]]
    origin = [float(o) for o in img.GetOrigin()[:3]]
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    if img.GetNumberOfComponentsPerPixel() > 1:  # (k, j, i, c) → (c, k, j, i)
        arr = np.moveaxis(arr, -1, 0)
    # a 4D ITK image reads as (t, k, j, i): its 4th axis holds the channels
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    itk = {
        "origin": origin,
        "spacing": spacing_itk,
        "direction": [float(v) for v in direction.ravel()],
    }
    affine = _affine_from_itk(origin, spacing_itk, direction)
    spacing = (spacing_itk[2], spacing_itk[1], spacing_itk[0])
    return Volume(np.ascontiguousarray(arr), affine, spacing, path, {"itk": itk})


def _write_itk(path: str, data: np.ndarray, geometry: dict[str, Any]) -> None:
    import SimpleITK as sitk

    itk = geometry.get("itk") or _itk_from_affine(np.asarray(geometry["affine"]))
    img = sitk.GetImageFromArray(data)
    img.SetOrigin(tuple(itk["origin"]))
    img.SetSpacing(tuple(itk["spacing"]))
    img.SetDirection(tuple(itk["direction"]))
    sitk.WriteImage(img, path, useCompression=True)


def _affine_from_itk(
    origin: list[float], spacing: list[float], direction: np.ndarray
) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(origin)
    return affine


def _itk_from_affine(affine: np.ndarray) -> dict[str, Any]:
    lps = _LPS_TO_RAS @ affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    direction = lps / spacing
    origin = _LPS_TO_RAS @ affine[:3, 3]
    return {
        "origin": [float(v) for v in origin],
        "spacing": [float(v) for v in spacing],
        "direction": [float(v) for v in direction.ravel()],
    }


def _lists(m: np.ndarray) -> list[list[float]]:
    return [[float(v) for v in row] for row in np.asarray(m)]


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:160]}"
