"""Loading one raw case and checking it, before anything is written.

The two per-case tasks of a conversion live here: :func:`fingerprint_case` (the statistics
pass: spacing, shape and foreground intensities of a case) and :func:`convert_case`
(read → check → preprocess → foreground indices → write). Both run in worker processes,
one task per case, and turn every problem into a one-line :class:`PGPSInputError` that
names the file, so one bad case never stops the others.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pgps_data.errors import PGPSInputError
from pgps_data.raw.entries import check_case_id, show
from pgps_data.raw.layouts import CaseSpec, DatasetSpec
from pgps_data.raw.preprocess import FINGERPRINT_SEED, crop_to_nonzero, preprocess_case
from pgps_data.raw.readers import Volume, check_finite, geometry_dict, read_volume
from pgps_data.store.foreground import foreground_indices

AFFINE_TOLERANCE = 1e-3  # mm; image and label (and channel files) must share geometry
_DRAW_CHUNK = 1 << 22  # random indices drawn per step (the stream is the same in one go)


@dataclass
class LoadedCase:
    """A raw case in memory: image (C, Z, Y, X) float32, label (Z, Y, X) or None."""

    case: CaseSpec
    image: np.ndarray
    label: np.ndarray | None
    reference: Volume  # the first image file: its geometry is the case's geometry


def load_case(spec: DatasetSpec, case: CaseSpec) -> LoadedCase:
    """Read every file of a case and check that they belong together.

    Raises PGPSInputError naming the offending file for: unreadable/truncated files, 2D
    files, a wrong channel count, non-finite intensities, image/label shape or geometry
    mismatch, and label values that dataset.json does not declare.
    """
    n_channels = len(spec.channel_names)
    if len(case.image_paths) == 1:
        ref = read_volume(case.image_paths[0], channels=n_channels)
        check_finite(ref)
        image = ref.data if ref.data.ndim == 4 else ref.data[None]
    else:
        vols = [read_volume(p, channels=1) for p in case.image_paths]
        ref = vols[0]
        for vol in vols:
            check_finite(vol)
            _same_geometry(ref, vol)
        image = np.stack([v.data for v in vols])
    if image.shape[0] != n_channels:
        raise PGPSInputError(
            f"{case.image_paths[0]}: has {image.shape[0]} channel(s), dataset.json declares "
            f"{n_channels}; fix the file or dataset.json"
        )
    label = None
    if case.label_path is not None:
        lab = read_volume(case.label_path, channels=1)
        _same_geometry(ref, lab)
        raw = lab.data
        if not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)):
            raise PGPSInputError(f"{lab.path}: label holds non-integer values; labels must be integers")
        found = np.unique(raw).astype(np.int64)
        allowed = set(spec.label_set.all_values)
        bad = [int(v) for v in found if int(v) not in allowed]
        if bad:
            raise PGPSInputError(
                f"{lab.path}: label values {bad} are not in dataset.json "
                f"(declared: {sorted(allowed)}); fix the label or dataset.json"
            )
        label = raw.astype(np.uint8)
    return LoadedCase(case, np.asarray(image, dtype=np.float32), label, ref)


def fingerprint_case(spec: DatasetSpec, case: CaseSpec, samples_per_case: int) -> dict[str, Any]:
    """Statistics pass for one training case: spacing, cropped shape, CT intensities.

    Returns ``{"case_id", "spacing", "shape", "crop_ratio", "samples": {channel: (values,
    counts)}}`` or ``{"case_id", "error": line}``. The samples are nnU-Net's foreground
    draw (with replacement, ``RandomState(1234)`` shared by the channels in order) held as
    a histogram of the distinct values drawn: the same multiset, without shipping tens of
    millions of floats between processes.
    """
    try:
        loaded = load_case(spec, case)
        image, label, _ = crop_to_nonzero(loaded.image, loaded.label)
        ct = [c for c, m in enumerate(spec.modalities) if m.upper() == "CT"]
        return {
            "case_id": case.case_id,
            "spacing": [float(s) for s in loaded.reference.spacing],
            "shape": [int(s) for s in image.shape[1:]],
            "crop_ratio": float(np.prod(image.shape[1:]) / np.prod(loaded.image.shape[1:])),
            "samples": foreground_histograms(image, label, samples_per_case, ct),
        }
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        return {"case_id": case.case_id, "error": _one_line(case, exc)}


def foreground_histograms(
    image: np.ndarray, label: np.ndarray | None, n: int, channels: list[int],
    seed: int = FINGERPRINT_SEED,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """nnU-Net's per-channel foreground draw as ``{channel: (values, counts)}``.

    Exactly the multiset that :func:`~pgps_data.raw.preprocess.foreground_intensity_samples`
    draws (``RandomState.choice`` with replacement is ``fg[randint(0, len(fg), n)]``), but
    counted per voxel instead of materialised; only ``channels`` are returned, the others
    are drawn only to keep the shared random stream in step.
    """
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if label is None or not channels:
        return {c: (np.empty(0, np.float32), np.empty(0, np.int64)) for c in channels}
    rs = np.random.RandomState(seed)
    mask = label > 0
    for c in range(max(channels) + 1):
        fg = image[c][mask]
        per_voxel = np.zeros(fg.size, np.int64)
        if fg.size:
            for start in range(0, n, _DRAW_CHUNK):
                draw = rs.randint(0, fg.size, size=min(_DRAW_CHUNK, n - start))
                per_voxel += np.bincount(draw, minlength=fg.size)
        if c in channels:
            values, inverse = np.unique(fg, return_inverse=True)
            counts = np.bincount(inverse.ravel(), weights=per_voxel, minlength=values.size)
            keep = counts > 0
            out[c] = (values[keep], np.rint(counts[keep]).astype(np.int64))
    return out


def convert_case(
    spec: DatasetSpec,
    case: CaseSpec,
    store_path: Path,
    plan: dict[str, Any],
) -> dict[str, Any]:
    """Read, check, preprocess and write one case; returns its summary or its error.

    The case id becomes the folder ``cases/<id>`` of the store, so it is checked again
    here (a CaseSpec may be built by hand, not by ``discover``) before anything is read
    or written.
    """
    from pgps_data.store.write import write_case  # keep worker import light

    try:
        unsafe = check_case_id(case.case_id)
        if unsafe is not None:
            where = show(case.image_paths[0]) if case.image_paths else spec.root
            raise PGPSInputError(f"{where}: {unsafe}; case refused")
        loaded = load_case(spec, case)
        image, label, props = preprocess_case(
            loaded.image,
            loaded.label,
            spacing=loaded.reference.spacing,
            target_spacing=plan["target_spacing"],
            modalities=spec.modalities,
            stats=plan["intensity_stats"],
            label_values=spec.label_set.all_values,
            use_mask_for_norm=plan["use_mask_for_norm"],
        )
        indices = annotated = None
        counts: dict[int, int] = {}
        if label is not None:
            labels = spec.label_set
            indices, annotated, counts = foreground_indices(
                label, labels.foreground_values, case.case_id, labels.ignore_label
            )
        root = Path(spec.root)
        attrs = {
            "case_id": case.case_id,
            "source_files": {
                "image": [str(Path(p).relative_to(root)) for p in case.image_paths],
                "label": None
                if case.label_path is None
                else str(Path(case.label_path).relative_to(root)),
            },
            "geometry": geometry_dict(loaded.reference),
            "preprocessing": props,
            "shape": [int(s) for s in image.shape[1:]],
            "label_counts": {str(v): n for v, n in counts.items()},
            "voxels": int(np.prod(image.shape[1:])),
        }
        write_case(
            store_path,
            case.case_id,
            image=image,
            label=label,
            indices=indices,
            annotated=annotated,
            attrs=attrs,
            codec=plan["codec"],
        )
        return {"case_id": case.case_id, "counts": counts, "voxels": attrs["voxels"]}
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        return {"case_id": case.case_id, "error": _one_line(case, exc)}


def _same_geometry(ref: Volume, other: Volume) -> None:
    ref_name = "/".join(Path(ref.path).parts[-2:])  # imagesTr/x.nii.gz vs labelsTr/x.nii.gz
    ref_shape = ref.data.shape[-3:]
    if other.data.shape[-3:] != ref_shape:
        raise PGPSInputError(
            f"{other.path}: shape {tuple(other.data.shape[-3:])} differs from "
            f"{ref_name} {tuple(ref_shape)} (Z, Y, X); they must match voxel for voxel"
        )
    if not np.allclose(np.asarray(other.affine), np.asarray(ref.affine), atol=AFFINE_TOLERANCE):
        raise PGPSInputError(
            f"{other.path}: geometry (affine) differs from {ref_name}; "
            "image and label must share origin, spacing and direction"
        )


def _one_line(case: CaseSpec, exc: BaseException) -> str:
    if isinstance(exc, PGPSInputError):
        return str(exc)
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
    files = case.image_paths[0] if case.image_paths else case.case_id
    msg = " ".join(str(exc).split())[:300]
    return f"{files}: case {case.case_id} failed: {type(exc).__name__}: {msg}{at}"
