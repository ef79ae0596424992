"""Fast resampling with nnU-Net v2's semantics (images, label maps, probability maps).

nnU-Net resamples with ``skimage.transform.resize(mode="edge", anti_aliasing=False)``,
i.e. ``scipy.ndimage.zoom(..., mode="nearest", grid_mode=True)`` followed by a clip to
the input's range, in float64, voxel by voxel with 4**3 taps. That operation is linear
and separable: padding, the B-spline prefilter and the tensor-product interpolation all
act on one axis at a time. So we build, once per (n_in, n_out, order), the exact 1D
operator matrix by running scipy's own zoom on impulses, and apply it axis by axis as
banded float32 matrix products (BLAS). The result equals nnU-Net's up to float32
rounding, at a fraction of the cost.

nnU-Net's anisotropy rule is reproduced: if max/min spacing exceeds 3 (source spacing
checked first, then target) and exactly one axis has the largest spacing, that axis is
resampled separately with nearest neighbour (``order_z=0``) while the in-plane axes use
the requested order; in-plane results are clipped per slice as nnU-Net's per-slice
``resize`` calls do. Label maps use nnU-Net's ``resize_segmentation``: one-hot per label
present, linear, ``>= 0.5`` wins, labels written in ascending order.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

ANISO_THRESHOLD = 3.0  # nnunetv2.configuration.ANISO_THRESHOLD
_BLOCK = 64  # output rows per banded matrix block
_TINY = 1e-9  # operator weights below this are dropped (far below float32 resolution)


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

    ``order`` 0, 1 or 3 (spline order as in skimage/scipy); the anisotropy rule uses the
    spacings only to pick the separate axis, which gets ``order_z``. Output is clipped to
    the input range like skimage's ``resize(clip=True)``.
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


def resample_image(
    image: np.ndarray,
    spacing_from: Sequence[float],
    spacing_to: Sequence[float],
    order: int = 3,
) -> np.ndarray:
    """Resample an image (C, Z, Y, X) from one spacing to another (nnU-Net's rule) → float32."""
    shape = compute_new_shape(image.shape[1:], spacing_from, spacing_to)
    return resample_to_shape(image, shape, spacing_from, spacing_to, order=order, order_z=0)


def resample_label(
    label: np.ndarray,
    spacing_from: Sequence[float],
    spacing_to: Sequence[float],
    labels: Sequence[int] | None = None,
    mode: str = "onehot_linear",
) -> np.ndarray:
    """Resample a label map (Z, Y, X) to a new spacing → uint8 (nnU-Net's rule and shape)."""
    shape = compute_new_shape(label.shape, spacing_from, spacing_to)
    return resample_label_to_shape(label, shape, spacing_from, spacing_to, labels, mode)


def resample_label_to_shape(
    label: np.ndarray,
    new_shape: Sequence[int],
    spacing_from: Sequence[float],
    spacing_to: Sequence[float],
    labels: Sequence[int] | None = None,
    mode: str = "onehot_linear",
) -> np.ndarray:
    """Resample a label map (Z, Y, X) to ``new_shape`` → uint8.

    ``mode="onehot_linear"`` is nnU-Net's ``resize_segmentation(order=1)``: for each label
    present (ascending; ``labels`` restricts the set, background 0 is implicit) the one-hot
    mask is interpolated linearly and voxels with value >= 0.5 take that label. Only the
    label's bounding box is computed, which makes small structures cheap. With the
    anisotropy rule the separate axis uses nearest neighbour on the label map, as nnU-Net's
    ``order_z=0`` does. ``mode="nearest"`` is order 0 on every axis.
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
    axis = separate_axis(spacing_from, spacing_to)
    linear_axes = [a for a in range(3) if a != axis]
    mid_shape = list(new_shape)
    if axis is not None:
        mid_shape[axis] = lab.shape[axis]
    out = np.zeros(mid_shape, dtype=np.uint8)
    present = [int(v) for v in np.unique(lab) if v != 0]
    if labels is not None:
        present = [v for v in present if v in {int(x) for x in labels}]
    for value in present:
        mask = lab == value
        box = _bbox(mask)  # along the separate axis nothing mixes: the box stays as is
        sub = mask[tuple(slice(lo, hi) for lo, hi in box)].astype(np.float32)
        ranges = [list(b) for b in box]
        for a in linear_axes:
            if lab.shape[a] == mid_shape[a]:
                continue
            op = _operator(lab.shape[a], mid_shape[a], 1)
            sub, (o0, o1) = op.apply(sub, a, ranges[a][0], ranges[a][1])
            ranges[a] = [o0, o1]
        region = tuple(slice(lo, hi) for lo, hi in ranges)
        out[region][sub >= 0.5] = value
    if axis is not None and lab.shape[axis] != new_shape[axis]:
        out = np.take(out, _nearest_index(lab.shape[axis], new_shape[axis], "map"), axis=axis)
    return np.ascontiguousarray(out)


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
            out, _ = _operator(vol.shape[a], new_shape[a], order).apply(out, a)
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
            out, _ = _operator(vol.shape[axis], new_shape[axis], order_z, "map").apply(out, axis)
    return np.ascontiguousarray(out)


def _bbox(mask: np.ndarray) -> list[tuple[int, int]]:
    box = []
    for a in range(mask.ndim):
        other = tuple(b for b in range(mask.ndim) if b != a)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return box


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


class _AxisOperator:
    """Exact 1D resampling matrix (n_out, n_in), applied as banded float32 products."""

    def __init__(self, matrix: np.ndarray):
        matrix = np.where(np.abs(matrix) < _TINY, 0.0, matrix)
        self.n_out, self.n_in = matrix.shape
        self.w = matrix.astype(np.float32)
        nz = matrix != 0
        has = nz.any(axis=1)
        self.first = np.where(has, nz.argmax(axis=1), self.n_in)
        self.last = np.where(has, self.n_in - nz[:, ::-1].argmax(axis=1), 0)  # exclusive

    def apply(
        self, x: np.ndarray, axis: int, lo: int = 0, hi: int | None = None
    ) -> tuple[np.ndarray, tuple[int, int]]:
        """Apply along ``axis`` to ``x`` holding source indices [lo, hi).

        Samples outside [lo, hi) are taken as zero (exact for masks cut to their bbox, and
        the whole axis by default). Returns the output rows that can be non-zero and their
        range [o0, o1).
        """
        hi = self.n_in if hi is None else hi
        if x.shape[axis] != hi - lo:
            raise ValueError("x does not match the source range")
        touches = (self.first < hi) & (self.last > lo)
        rows = np.flatnonzero(touches)
        o0, o1 = (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, 0)
        pre = int(np.prod(x.shape[:axis]))
        post = int(np.prod(x.shape[axis + 1 :]))
        x3 = np.ascontiguousarray(x, dtype=np.float32).reshape(pre, hi - lo, post)
        y3 = np.zeros((pre, o1 - o0, post), dtype=np.float32)
        for b0 in range(o0, o1, _BLOCK):
            b1 = min(b0 + _BLOCK, o1)
            i0 = max(int(self.first[b0:b1].min()), lo)
            i1 = min(int(self.last[b0:b1].max()), hi)
            if i1 <= i0:
                continue
            w = self.w[b0:b1, i0:i1]
            xs = x3[:, i0 - lo : i1 - lo, :]
            if post == 1:
                y3[:, b0 - o0 : b1 - o0, 0] = xs[:, :, 0] @ w.T
            else:
                y3[:, b0 - o0 : b1 - o0, :] = np.matmul(w, xs)
        shape = list(x.shape)
        shape[axis] = o1 - o0
        return y3.reshape(shape), (o0, o1)


@lru_cache(maxsize=256)
def _operator(n_in: int, n_out: int, order: int, how: str = "zoom") -> _AxisOperator:
    """The exact operator scipy applies along one axis (built from impulses, float64)."""
    eye = np.eye(n_in, dtype=np.float64)
    if how == "zoom":  # skimage.resize(mode="edge") == ndi.zoom(mode="nearest", grid_mode=True)
        cols = ndi.zoom(eye, (n_out / n_in, 1.0), order=order, mode="nearest", grid_mode=True)
    else:  # nnU-Net's separate-axis map_coordinates with mode="nearest"
        coords = float(n_in) / n_out * (np.arange(n_out) + 0.5) - 0.5
        grid = np.stack(np.meshgrid(coords, np.arange(n_in), indexing="ij"))
        cols = ndi.map_coordinates(eye, grid, order=order, mode="nearest")
    if cols.shape != (n_out, n_in):
        raise RuntimeError(f"operator shape {cols.shape} != {(n_out, n_in)}")
    return _AxisOperator(cols)
