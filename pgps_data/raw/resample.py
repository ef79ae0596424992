"""Resampling with nnU-Net v2's semantics (images, label maps, probability maps).

nnU-Net resamples with ``skimage.transform.resize(mode="edge", anti_aliasing=False)``,
i.e. ``scipy.ndimage.zoom(..., mode="nearest", grid_mode=True)`` followed by a clip to
the input's range, in float64, voxel by voxel with 4**3 taps. That operation is linear
and separable (padding, the B-spline prefilter and the tensor-product interpolation all
act on one axis at a time), so we apply it axis by axis in float32
(:mod:`pgps_data.raw.resample_axis`): the result equals nnU-Net's up to float32
rounding, at a fraction of the cost, and is the same to the bit on every machine, BLAS
kernel, thread and worker count (no matrix products).

nnU-Net's anisotropy rule is reproduced: if max/min spacing exceeds 3 (source spacing
checked first, then target) and exactly one axis has the largest spacing, that axis is
resampled separately with nearest neighbour (``order_z=0``) while the in-plane axes use
the requested order; in-plane results are clipped per slice as nnU-Net's per-slice
``resize`` calls do. Label maps follow nnU-Net 2.8.1 exactly, argmax over the labels'
linearly interpolated one-hot masks (:mod:`pgps_data.raw.resample_labels`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from pgps_data.raw.resample_axis import axis_operator
from pgps_data.raw.resample_labels import resize_foreground

ANISO_THRESHOLD = 3.0  # nnunetv2.configuration.ANISO_THRESHOLD
OUTSIDE = -1  # nnU-Net's label for background outside the non-zero mask (crop_to_nonzero)


def compute_new_shape(
    shape: Sequence[int], spacing_from: Sequence[float], spacing_to: Sequence[float]
) -> tuple[int, ...]:
    """nnU-Net's ``compute_new_shape``: ``int(round(old_spacing / new_spacing * old_size))``."""
    if not (len(shape) == len(spacing_from) == len(spacing_to)):
        raise ValueError("shape and spacings must have the same length")
    return tuple(
        round(float(f) / float(t) * int(n))
        for n, f, t in zip(shape, spacing_from, spacing_to, strict=True)
    )


def separate_axis(spacing_from: Sequence[float], spacing_to: Sequence[float]) -> int | None:
    """The axis nnU-Net resamples separately (order 0), or None.

    Mirrors ``determine_do_sep_z_and_axis(force_separate_z=None)``: the source spacing is
    checked first, then the target; the first anisotropic one (max/min > 3) decides, and
    only when exactly one axis carries the largest spacing.
    """
    for spacing in (spacing_from, spacing_to):
        sp = np.asarray(spacing, dtype=np.float64)
        if sp.max() / sp.min() > ANISO_THRESHOLD:
            axes = np.where(sp.max() / sp == 1)[0]
            return int(axes[0]) if len(axes) == 1 else None
    return None


def resample_to_shape(
    data: np.ndarray,
    new_shape: Sequence[int],
    spacing_from: Sequence[float],
    spacing_to: Sequence[float],
    order: int = 3,
    order_z: int = 0,
) -> np.ndarray:
    """Resample every channel of ``data`` (C, Z, Y, X) to ``new_shape`` → float32.

    ``order`` 0-5 (spline order as in skimage/scipy; nnU-Net uses 3 for images and 1 for
    probabilities); the anisotropy rule uses the spacings only to pick the separate axis,
    which gets ``order_z``. Output is clipped to the input range like skimage's
    ``resize(clip=True)``.
    """
    if data.ndim != 4:
        raise ValueError(f"expected (C, Z, Y, X), got shape {data.shape}")
    new_shape = tuple(int(s) for s in new_shape)
    src = np.asarray(data, dtype=np.float32)
    if tuple(src.shape[1:]) == new_shape:
        return src.copy()
    axis = separate_axis(spacing_from, spacing_to)
    out = np.empty((src.shape[0], *new_shape), dtype=np.float32)
    for c in range(src.shape[0]):
        out[c] = _resample_volume(src[c], new_shape, order, axis, order_z)
    return out


def resample_label_to_shape(
    label: np.ndarray,
    new_shape: Sequence[int],
    spacing_from: Sequence[float],
    spacing_to: Sequence[float],
    labels: Sequence[int] | None = None,
    mode: str = "onehot_linear",
    outside: np.ndarray | None = None,
) -> np.ndarray:
    """Resample a label map (Z, Y, X) to ``new_shape`` → uint8.

    ``mode="onehot_linear"`` is nnU-Net 2.8.1's segmentation resampling (its
    ``resample_data_or_seg(is_seg=True, order=1, order_z=0)``): each voxel takes the label
    whose linearly interpolated one-hot mask scores highest, exact ties to the nearest
    neighbour's label (:mod:`pgps_data.raw.resample_labels`); with the anisotropy rule
    per slice in plane, then nearest neighbour across slices. ``outside`` (bool, same
    shape) marks the background nnU-Net labels -1, outside the non-zero mask: a label of
    its own in the argmax, written as 0 like all background. Values not in ``labels``
    (when given) count as background. ``mode="nearest"`` is order 0 on every axis.
    """
    if label.ndim != 3:
        raise ValueError(f"expected (Z, Y, X), got shape {label.shape}")
    if mode not in ("onehot_linear", "nearest"):
        raise ValueError(f"mode must be 'onehot_linear' or 'nearest', not {mode!r}")
    new_shape = tuple(int(s) for s in new_shape)
    lab = np.asarray(label)
    if lab.size and (lab.min() < 0 or lab.max() > 255):
        raise ValueError("label values must lie in 0..255")
    lab = lab.astype(np.uint8, copy=False)
    if tuple(lab.shape) == new_shape:
        return lab.copy()
    if mode == "nearest":
        out = lab
        for a in range(3):
            out = np.take(out, _nearest_index(lab.shape[a], new_shape[a], "zoom"), axis=a)
        return np.ascontiguousarray(out)
    seg = lab.astype(np.int16)
    if labels is not None:
        seg[~np.isin(lab, np.asarray(list(labels), dtype=np.int64))] = 0
    if outside is not None:
        if outside.shape != lab.shape:
            raise ValueError(f"outside mask {outside.shape} != label shape {lab.shape}")
        seg[outside & (seg == 0)] = OUTSIDE
    axis = separate_axis(spacing_from, spacing_to)
    mid_shape = list(new_shape)
    if axis is not None:
        mid_shape[axis] = lab.shape[axis]  # in plane only: every slice on its own
    out = resize_foreground(seg, mid_shape)  # background (0 and -1) comes out as 0
    if axis is not None and lab.shape[axis] != new_shape[axis]:
        out = np.take(out, _nearest_index(lab.shape[axis], new_shape[axis], "map"), axis=axis)
    return np.ascontiguousarray(out.astype(np.uint8))


# ----------------------------------------------------------------------------- internals


def _resample_volume(
    vol: np.ndarray, new_shape: tuple[int, ...], order: int, axis: int | None, order_z: int
) -> np.ndarray:
    """One channel (Z, Y, X) float32 → new_shape, nnU-Net semantics (see module doc)."""
    if order == 0:
        out = vol
        for a in range(3):
            if vol.shape[a] != new_shape[a]:
                out = np.take(out, _nearest_index(vol.shape[a], new_shape[a], "zoom"), axis=a)
        return out
    axes = [a for a in range(3) if a != axis]
    # shrinking axes first keeps the intermediate arrays small
    axes.sort(key=lambda a: new_shape[a] / vol.shape[a])
    out = vol
    for a in axes:
        if vol.shape[a] != new_shape[a]:
            out = axis_operator(vol.shape[a], new_shape[a], order).apply(out, a)
    if axis is None:
        np.clip(out, vol.min(), vol.max(), out=out)
        return out
    # per-slice clip (nnU-Net resizes each slice along the separate axis on its own)
    other = tuple(a for a in range(3) if a != axis)
    shape = [1, 1, 1]
    shape[axis] = vol.shape[axis]
    np.clip(out, vol.min(axis=other).reshape(shape), vol.max(axis=other).reshape(shape), out=out)
    if vol.shape[axis] != new_shape[axis]:
        if order_z == 0:
            out = np.take(out, _nearest_index(vol.shape[axis], new_shape[axis], "map"), axis=axis)
        else:  # nnU-Net's map_coordinates(order=order_z, mode="nearest") along that axis
            out = axis_operator(vol.shape[axis], new_shape[axis], order_z, "map").apply(out, axis)
    return np.ascontiguousarray(out)


@lru_cache(maxsize=512)
def _nearest_index(n_in: int, n_out: int, how: str) -> np.ndarray:
    """Source index of each output sample for order-0 resampling.

    ``how="zoom"``: as skimage/ndi.zoom(grid_mode=True) picks it; ``how="map"``: as
    nnU-Net's separate-axis ``map_coordinates(scale * (k + 0.5) - 0.5, order=0)``.
    """
    src = np.arange(n_in, dtype=np.float64)
    if how == "zoom":
        idx = ndi.zoom(src, n_out / n_in, order=0, mode="nearest", grid_mode=True)
    else:
        coords = float(n_in) / n_out * (np.arange(n_out) + 0.5) - 0.5
        idx = ndi.map_coordinates(src, coords[None], order=0, mode="nearest")
    if idx.shape[0] != n_out:
        raise RuntimeError(f"nearest index length {idx.shape[0]} != {n_out}")
    return np.rint(idx).astype(np.intp)
