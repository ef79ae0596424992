"""nnU-Net v2's preprocessing, forward and inverse: crop → normalise → resample.

The forward map turns a raw case into the network's space; :func:`restore_to_source`
undoes it for a prediction, so it can be written with the input file's geometry (the
affine never changes: only voxel-space cropping and resampling happen here).

Defaults follow nnU-Net v2 (``DefaultPreprocessor``, ``DatasetFingerprintExtractor``,
``ExperimentPlanner``): crop to the hole-filled non-zero mask of all channels; CT
channels are clipped to the dataset's foreground 0.5/99.5 percentiles and scaled with the
foreground mean/std; other channels get a per-case z-score (within the non-zero mask when
the dataset's median cropped/uncropped size ratio is below 3/4: ``use_mask_for_norm``);
resampling to the dataset's median spacing (10th percentile on a strongly anisotropic
axis), images with cubic splines and labels by the argmax of their linearly interpolated
one-hot masks, the anisotropic axis with nearest neighbour (see :mod:`pgps_data.raw.resample`).

nnU-Net marks the background outside the non-zero mask as label -1 before resampling, and
its label resampling takes the argmax over all labels, so that region is a label of its
own there; we resample with it the same way (the same label map, voxel for voxel) and
store 0 for it: our labels are uint8, and nnU-Net's training maps -1 to 0 anyway
(``RemoveLabelTansform(-1, 0)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.ndimage import binary_fill_holes

from pgps_data.errors import PGPSInputError
from pgps_data.raw.resample import (
    ANISO_THRESHOLD,
    compute_new_shape,
    resample_label_to_shape,
    resample_to_shape,
    separate_axis,
)

FOREGROUND_SAMPLES_TOTAL = int(10e7)  # nnU-Net samples 10e7 foreground voxels per dataset
FINGERPRINT_SEED = 1234  # nnU-Net's seed for every case's foreground sample
MASK_FOR_NORM_RATIO = 0.75  # use_mask_for_norm when median relative size after crop < 3/4

Stats = Mapping[str, Any] | Sequence[Any] | None


def crop_to_nonzero(
    image: np.ndarray, label: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, list[list[int]]]:
    """Crop (C, Z, Y, X) image and (Z, Y, X) label to the non-zero region of the image.

    The mask is "any channel != 0" with holes filled (nnU-Net's ``create_nonzero_mask``);
    ``bbox`` is ``[[z0, z1], [y0, y1], [x0, x1]]``, ends exclusive. An all-zero image keeps
    its full extent (nothing to crop to). Returns views into the inputs.
    """
    bbox = nonzero_bbox(nonzero_mask(image))
    region = tuple(slice(lo, hi) for lo, hi in bbox)
    cropped_label = None if label is None else label[region]
    return image[(slice(None), *region)], cropped_label, bbox


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Boolean (Z, Y, X): any channel non-zero, holes filled (``binary_fill_holes``)."""
    if image.ndim != 4:
        raise ValueError(f"expected (C, Z, Y, X), got shape {image.shape}")
    mask = np.any(image != 0, axis=0)
    return binary_fill_holes(mask)


def nonzero_bbox(mask: np.ndarray) -> list[list[int]]:
    """Bounding box of a boolean (Z, Y, X) mask, ends exclusive; full extent if empty."""
    box = []
    for a in range(mask.ndim):
        other = tuple(b for b in range(mask.ndim) if b != a)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append([int(hit[0]), int(hit[-1]) + 1] if hit.size else [0, int(mask.shape[a])])
    return box


# ------------------------------------------------------------------- dataset statistics


def samples_per_case(n_cases: int) -> int:
    """nnU-Net's foreground sample count per training case: ``int(10e7 // n_cases)``."""
    return int(FOREGROUND_SAMPLES_TOTAL // max(1, n_cases))


def foreground_intensity_sample(
    channel: np.ndarray, label: np.ndarray | None, n: int, seed: int = FINGERPRINT_SEED
) -> np.ndarray:
    """``n`` intensities drawn with replacement from the voxels where ``label > 0``.

    nnU-Net's fingerprint draws with replacement (so small-foreground cases are not
    under-represented) from a ``RandomState(1234)`` per case; for a single channel this
    returns exactly its sample. An absent label or foreground gives an empty array.
    """
    if label is None:
        return np.empty(0, dtype=channel.dtype)
    fg = channel[label > 0]
    if fg.size == 0:
        return np.empty(0, dtype=channel.dtype)
    return np.random.RandomState(seed).choice(fg, n, replace=True)


def foreground_intensity_samples(
    image: np.ndarray, label: np.ndarray | None, n: int, seed: int = FINGERPRINT_SEED
) -> list[np.ndarray]:
    """Per-channel samples of a (C, Z, Y, X) image with nnU-Net's shared RandomState.

    nnU-Net draws all channels of a case from one generator in channel order; this
    reproduces that for multi-channel cases (channel 0 equals the single-channel draw).
    """
    rs = np.random.RandomState(seed)
    fg_mask = None if label is None else label > 0
    out = []
    for c in range(image.shape[0]):
        fg = image[c][fg_mask] if fg_mask is not None else image[c][:0]
        out.append(rs.choice(fg, n, replace=True) if fg.size else np.empty(0, image.dtype))
    return out


def compute_intensity_stats(samples: Sequence[np.ndarray]) -> dict[str, float]:
    """One channel's dataset statistics from the per-case foreground samples.

    Returns ``{"mean", "std", "median", "min", "max", "percentile_00_5",
    "percentile_99_5"}`` as floats, computed like nnU-Net on the concatenated samples.
    Raises PGPSInputError when no case had any foreground.
    """
    arrays = [np.asarray(s).ravel() for s in samples if np.asarray(s).size]
    if not arrays:
        raise PGPSInputError(
            "dataset: no foreground voxels in any training case; CT normalisation needs "
            "labelled foreground (check the labels)"
        )
    values = np.concatenate(arrays)
    p005, median, p995 = np.percentile(values, (0.5, 50.0, 99.5))
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "median": float(median),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
        "percentile_00_5": float(p005),
        "percentile_99_5": float(p995),
    }


def use_mask_for_norm(relative_sizes_after_crop: Sequence[float]) -> bool:
    """nnU-Net's rule: z-score inside the non-zero mask when the median case shrank to < 3/4."""
    if not relative_sizes_after_crop:
        return False
    return bool(np.median(np.asarray(relative_sizes_after_crop)) < MASK_FOR_NORM_RATIO)


def target_spacing(
    spacings: Sequence[Sequence[float]],
    shapes_after_crop: Sequence[Sequence[int]] | None = None,
) -> tuple[float, float, float]:
    """The dataset's target spacing (Z, Y, X): nnU-Net 3d_fullres's rule.

    The median spacing per axis. With ``shapes_after_crop`` given, nnU-Net's anisotropy
    correction also applies: when the coarsest axis is > 3x coarser than the others and has
    > 3x fewer voxels (median shapes), its target becomes the 10th percentile of its
    spacings (but not finer than the other axes: then max(other) + 1e-5).
    """
    sp = np.vstack([np.asarray(s, dtype=np.float64) for s in spacings])
    target = np.percentile(sp, 50, axis=0)
    if shapes_after_crop is not None and len(shapes_after_crop):
        sizes = np.percentile(
            np.vstack([np.asarray(s, dtype=np.float64) for s in shapes_after_crop]), 50, axis=0
        )
        worst = int(np.argmax(target))
        others = [a for a in range(len(target)) if a != worst]
        other_sp = [target[a] for a in others]
        other_sz = [sizes[a] for a in others]
        aniso_spacing = target[worst] > ANISO_THRESHOLD * max(other_sp)
        aniso_voxels = sizes[worst] * ANISO_THRESHOLD < min(other_sz)
        if aniso_spacing and aniso_voxels:
            t = float(np.percentile(sp[:, worst], 10))
            if t < max(other_sp):
                t = max(max(other_sp), t) + 1e-5
            target[worst] = t
    return tuple(float(t) for t in target)  # type: ignore[return-value]


# --------------------------------------------------------------------------- normalise


def normalise(
    image: np.ndarray,
    modalities: Sequence[str],
    stats: Stats,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Normalise each channel of (C, Z, Y, X) → new float32 array.

    ``"CT"`` (case-insensitive): clip to the dataset's foreground 0.5/99.5 percentiles,
    then ``(x - mean) / max(std, 1e-8)`` with ``stats[channel]`` (a dict from
    :func:`compute_intensity_stats`; ``stats`` is keyed by channel index as str or int, or
    a list). ``"noNorm"``: unchanged; ``"rescale_to_0_1"``: min-max to [0, 1];
    ``"rgb_to_0_1"``: / 255. Anything else: z-score over the case — only inside ``mask``
    when given (nnU-Net's use_mask_for_norm; voxels outside keep their value, 0).
    """
    if image.ndim != 4 or image.shape[0] != len(modalities):
        raise ValueError(f"image {image.shape} does not match {len(modalities)} modalities")
    out = np.array(image, dtype=np.float32, copy=True)
    for c, modality in enumerate(modalities):
        x = out[c]
        kind = str(modality).casefold()
        if kind == "ct":
            st = _channel_stats(stats, c)
            np.clip(x, st["percentile_00_5"], st["percentile_99_5"], out=x)
            x -= st["mean"]
            x /= max(st["std"], 1e-8)
        elif kind == "nonorm":
            pass
        elif kind == "rescale_to_0_1":
            x -= x.min()
            x /= max(float(x.max()), 1e-8)
        elif kind == "rgb_to_0_1":
            x /= 255.0
        elif mask is not None:
            vals = x[mask]
            mean, std = vals.mean(), vals.std()
            x[mask] = (vals - mean) / max(std, 1e-8)
        else:
            mean, std = x.mean(), x.std()
            x -= mean
            x /= max(std, 1e-8)
    return out


def _channel_stats(stats: Stats, c: int) -> Mapping[str, float]:
    found: Any = None
    if isinstance(stats, Mapping):
        found = stats.get(str(c), stats.get(c))  # type: ignore[call-overload]
    elif stats is not None and c < len(stats):
        found = stats[c]
    if not found:
        raise PGPSInputError(
            f"dataset: channel {c} is CT but no intensity statistics were computed for it "
            "(run the statistics pass over the training cases first)"
        )
    return found


# ------------------------------------------------------------------ forward and inverse


def preprocess_case(
    image: np.ndarray,
    label: np.ndarray | None,
    spacing: Sequence[float],
    target_spacing: Sequence[float],
    modalities: Sequence[str],
    stats: Stats,
    label_values: Sequence[int] | None = None,
    use_mask_for_norm: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Crop → normalise → resample one case, nnU-Net's order.

    image (C, Z, Y, X) any float/int dtype, label (Z, Y, X) integer or None, spacings
    (Z, Y, X) mm. Returns (image float32 (C, Z', Y', X'), label uint8 or None, props), props
    JSON-ready: ``shape_before_crop``, ``bbox``, ``shape_after_crop``,
    ``shape_after_resample``, ``spacing_source``, ``spacing_target``, ``anisotropic_axis``
    (the axis resampled with nearest neighbour, or None), ``use_mask_for_norm`` — all that
    :func:`restore_to_source` needs.
    """
    if image.ndim != 4:
        raise ValueError(f"expected image (C, Z, Y, X), got shape {image.shape}")
    if label is not None and tuple(label.shape) != tuple(image.shape[1:]):
        raise ValueError(f"label shape {label.shape} != image shape {image.shape[1:]}")
    mask_full = nonzero_mask(image)
    bbox = nonzero_bbox(mask_full)
    region = tuple(slice(lo, hi) for lo, hi in bbox)
    cropped = image[(slice(None), *region)]
    cropped_label = None if label is None else label[region]
    mask = None
    if use_mask_for_norm:  # nnU-Net: seg >= 0, i.e. non-zero mask or any labelled voxel
        mask = mask_full[region]
        if cropped_label is not None:
            mask = mask | (cropped_label > 0)
    normed = normalise(cropped, modalities, stats, mask)
    src = [float(s) for s in spacing]
    tgt = [float(s) for s in target_spacing]
    new_shape = compute_new_shape(normed.shape[1:], src, tgt)
    out_image = resample_to_shape(normed, new_shape, src, tgt, order=3, order_z=0)
    out_label = None
    if cropped_label is not None:
        outside = ~mask_full[region]  # nnU-Net's -1 (crop_to_nonzero's nonzero_label)
        out_label = resample_label_to_shape(
            cropped_label, new_shape, src, tgt, label_values, outside=outside
        )
    props = {
        "shape_before_crop": [int(s) for s in image.shape[1:]],
        "bbox": bbox,
        "shape_after_crop": [int(s) for s in cropped.shape[1:]],
        "shape_after_resample": [int(s) for s in new_shape],
        "spacing_source": src,
        "spacing_target": tgt,
        "anisotropic_axis": separate_axis(src, tgt),
        "use_mask_for_norm": bool(use_mask_for_norm),
    }
    return out_image, out_label, props


def restore_to_source(
    arr: np.ndarray,
    props: Mapping[str, Any],
    order: int = 1,
    fill: Sequence[float] | None = None,
) -> np.ndarray:
    """Map a target-space prediction back to the source voxel grid (before cropping).

    ``arr`` (Z', Y', X') integer label map → uint8 (Z, Y, X): ``order=1`` one-hot linear
    (nnU-Net's label rule), ``order=0`` nearest; 0 outside the crop box.
    ``arr`` (K, Z', Y', X') probabilities or logits → float32 (K, Z, Y, X), resampled with
    spline ``order`` (nnU-Net exports with 1) and the anisotropy rule; outside the box each
    channel takes ``fill`` (default: 1 for channel 0, background, and 0 for the others).
    The file's affine applies unchanged to the result.
    """
    before = [int(s) for s in props["shape_before_crop"]]
    after_crop = [int(s) for s in props["shape_after_crop"]]
    expected = [int(s) for s in props["shape_after_resample"]]
    src = props["spacing_target"]  # we go from the target space back to the source
    dst = props["spacing_source"]
    region = tuple(slice(int(lo), int(hi)) for lo, hi in props["bbox"])
    if list(arr.shape[-3:]) != expected:
        raise ValueError(f"array shape {arr.shape[-3:]} != preprocessed shape {expected}")
    if arr.ndim == 3:
        mode = "nearest" if order == 0 else "onehot_linear"
        small = resample_label_to_shape(arr, after_crop, src, dst, mode=mode)
        out = np.zeros(before, dtype=np.uint8)
        out[region] = small
        return out
    if arr.ndim != 4:
        raise ValueError(f"expected (Z, Y, X) or (K, Z, Y, X), got shape {arr.shape}")
    small = resample_to_shape(arr, after_crop, src, dst, order=order, order_z=0)
    k = arr.shape[0]
    values = list(fill) if fill is not None else [1.0] + [0.0] * (k - 1)
    if len(values) != k:
        raise ValueError(f"fill has {len(values)} values for {k} channels")
    out = np.empty((k, *before), dtype=np.float32)
    out[:] = np.asarray(values, dtype=np.float32).reshape(k, 1, 1, 1)
    out[(slice(None), *region)] = small
    return out
