"""One axis of the image resampler, in an order fixed by this code (no BLAS).

What nnU-Net calls (skimage ``resize(mode="edge")`` → ``scipy.ndimage.zoom(mode="nearest",
grid_mode=True)``, or ``map_coordinates(mode="nearest")`` along its separate axis) is
separable: along each axis it (1) pads 12 edge samples on each side and runs the B-spline
prefilter, a causal and an anticausal first-order recursion per pole, and (2) interpolates,
``order + 1`` weighted taps per output sample. We run exactly these two steps, vectorised
over whole rows of the volume with numpy element-wise float32 operations, so every output
voxel is the same sequence of correctly rounded multiplies and adds on any machine.

Why not a matrix product (what we did before): a BLAS kernel chooses its own summation
order, FMA use and blocking, and they change with the kernel (OPENBLAS_CORETYPE=Haswell vs
SkylakeX) and with the thread count (the main process ran BLAS multi-threaded, the spawned
workers single-threaded), which moved the last bit of 4-10 % of the voxels between a
one-worker and a two-worker conversion. Element-wise ufuncs never reassociate or fuse, and
scipy's C code (used here only to build the small per-axis weight tables, in float64) is
a fixed build without threads: stores are byte-identical whatever BLAS does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

NPAD = 12  # scipy's _prepad_for_spline_filter: edge samples added for mode="nearest"
_POLES = {  # scipy ni_splines.c get_filter_poles
    2: (np.sqrt(8.0) - 3.0,),
    3: (np.sqrt(3.0) - 2.0,),
    4: (np.sqrt(664.0 - np.sqrt(438976.0)) + np.sqrt(304.0) - 19.0,
        np.sqrt(664.0 + np.sqrt(438976.0)) - np.sqrt(304.0) - 19.0),
    5: (np.sqrt(67.5 - np.sqrt(4436.25)) + np.sqrt(26.25) - 6.5,
        np.sqrt(67.5 + np.sqrt(4436.25)) - np.sqrt(26.25) - 6.5),
}
_INIT_TOL = 1e-12  # causal start value: terms z**i below this are far under float32 resolution
_CONTIGUOUS_ROW = 64  # fewer trailing elements than this: work on the transposed volume
_SWAP_ROWS = 4096  # rows per block of a transposing copy (cache-friendly, 2x a plain copy)
_CHUNK = 1 << 16  # elements per row chunk while interpolating: the taps' rows stay in cache


@dataclass(frozen=True)
class AxisOperator:
    """Resampling along one axis: optional spline prefilter, then ``taps`` weights per output.

    ``start[k]`` is the first coefficient (in the padded coefficient array of length
    ``n_in + 2 * pad``) that output ``k`` reads and ``weights[k, t]`` (float32) the weight of
    coefficient ``start[k] + t``.
    """

    n_in: int
    n_out: int
    order: int
    pad: int
    start: np.ndarray
    weights: np.ndarray

    def apply(self, x: np.ndarray, axis: int) -> np.ndarray:
        """Resample float32 ``x`` along ``axis`` → new float32 array (other axes unchanged)."""
        if x.shape[axis] != self.n_in:
            raise ValueError(f"axis {axis} has {x.shape[axis]} samples, operator {self.n_in}")
        pre = int(np.prod(x.shape[:axis], dtype=np.int64))
        post = int(np.prod(x.shape[axis + 1 :], dtype=np.int64))
        x3 = np.ascontiguousarray(x, dtype=np.float32).reshape(pre, self.n_in, post)
        flip = post < _CONTIGUOUS_ROW and pre > 1
        if flip:  # each step below then reads and writes whole contiguous rows
            x3 = _swap(x3).reshape(1, self.n_in, pre * post)
        coef = _prefilter(x3, self.order) if self.pad else x3
        y3 = _interpolate(coef, self.start, self.weights, self.n_out)
        if flip:
            y3 = _swap(y3.reshape(self.n_out, pre, post))
        shape = list(x.shape)
        shape[axis] = self.n_out
        return y3.reshape(shape)


@lru_cache(maxsize=256)
def axis_operator(n_in: int, n_out: int, order: int, how: str = "zoom") -> AxisOperator:
    """The operator scipy applies along one axis with spline ``order`` (0-5).

    ``how="zoom"``: ``ndi.zoom(mode="nearest", grid_mode=True)`` (skimage's resize);
    ``how="map"``: nnU-Net's separate-axis ``map_coordinates(scale * (k + 0.5) - 0.5,
    mode="nearest")``. The weights come from scipy itself (float64, then float32): for
    order 0 and 1 the operator applied to the identity, for higher orders the B-spline
    of one impulse sampled at each tap's offset (the taps never reach the edge of the
    padded coefficients, so no boundary rule applies there).
    """
    if not 0 <= order <= 5:
        raise ValueError(f"spline order must be 0..5, not {order}")
    if n_in < 1 or n_out < 1:
        raise ValueError(f"cannot resample {n_in} samples to {n_out}")
    k = np.arange(n_out, dtype=np.float64)
    if how == "zoom":  # NI_ZoomShift: cc = (k + 0.5) * (n_in / n_out) - 0.5
        coords = (k + 0.5) * (n_in / n_out) - 0.5
    elif how == "map":
        coords = float(n_in) / n_out * (k + 0.5) - 0.5
    else:
        raise ValueError(f"how must be 'zoom' or 'map', not {how!r}")
    if order <= 1:
        return _low_order(n_in, n_out, order, how, coords)
    coords = coords + NPAD
    if order % 2:  # scipy's first tap: floor(cc) - order // 2 (odd), floor(cc + 0.5) - ... (even)
        start = np.floor(coords).astype(np.intp) - order // 2
    else:
        start = np.floor(coords + 0.5).astype(np.intp) - order // 2
    offsets = coords[:, None] - (start[:, None] + np.arange(order + 1)[None, :])
    centre = order + 1
    impulse = np.zeros(2 * centre + 1, dtype=np.float64)
    impulse[centre] = 1.0
    weights = ndi.map_coordinates(impulse, (centre + offsets).reshape(1, -1), order=order,
                                  mode="nearest", prefilter=False).reshape(offsets.shape)
    if start.min() < 0 or start.max() + order >= n_in + 2 * NPAD:
        raise RuntimeError(f"operator {n_in}->{n_out} reads outside its padding")
    return AxisOperator(n_in, n_out, order, NPAD, start, weights.astype(np.float32))


def _low_order(n_in: int, n_out: int, order: int, how: str, coords: np.ndarray) -> AxisOperator:
    """Order 0 or 1 (no prefilter): scipy's operator applied to the identity, as taps."""
    eye = np.eye(n_in, dtype=np.float64)
    if how == "zoom":  # along the second axis a zoom of 1 is the identity, exactly
        matrix = ndi.zoom(eye, (n_out / n_in, 1.0), order=order, mode="nearest", grid_mode=True)
    else:
        grid = np.stack(np.meshgrid(coords, np.arange(n_in), indexing="ij"))
        matrix = ndi.map_coordinates(eye, grid, order=order, mode="nearest")
    if matrix.shape != (n_out, n_in):
        raise RuntimeError(f"operator shape {matrix.shape} != {(n_out, n_in)}")
    taps = min(order + 1, n_in)
    nonzero = matrix != 0
    first = np.where(nonzero.any(axis=1), nonzero.argmax(axis=1), 0)
    start = np.clip(first, 0, n_in - taps).astype(np.intp)
    index = start[:, None] + np.arange(taps)[None, :]
    weights = np.take_along_axis(matrix, index, axis=1)
    outside = matrix.copy()
    np.put_along_axis(outside, index, 0.0, axis=1)
    if np.any(outside != 0):
        raise RuntimeError(f"operator {n_in}->{n_out} order {order} has more than {taps} taps")
    return AxisOperator(n_in, n_out, order, 0, start, weights.astype(np.float32))


def _prefilter(x3: np.ndarray, order: int) -> np.ndarray:
    """scipy's ``spline_filter1d(np.pad(x, 12, "edge"), mode="nearest")`` along axis 1.

    (P, n, Q) float32 → (P, n + 24, Q) float32 B-spline coefficients: gain, then per pole
    the causal recursion from scipy's reflect start value and the anticausal recursion.
    Each step is one element-wise operation over a (P, Q) row.
    """
    n = x3.shape[1]
    poles = _POLES[order]
    gain = 1.0
    for z in poles:
        gain *= (1.0 - z) * (1.0 - 1.0 / z)
    size = n + 2 * NPAD
    c = np.empty((x3.shape[0], size, x3.shape[2]), dtype=np.float32)
    np.multiply(x3, np.float32(gain), out=c[:, NPAD : NPAD + n])
    c[:, :NPAD] = c[:, NPAD : NPAD + 1]
    c[:, NPAD + n :] = c[:, NPAD + n - 1 : NPAD + n]
    buf = np.empty((x3.shape[0], x3.shape[2]), dtype=np.float32)
    for z in poles:
        _causal_start(c, z, buf)
        z32 = np.float32(z)
        for i in range(1, size):  # c[i] += z * c[i - 1]
            np.multiply(c[:, i - 1], z32, out=buf)
            np.add(c[:, i], buf, out=c[:, i])
        np.multiply(c[:, size - 1], np.float32(z / (z - 1.0)), out=c[:, size - 1])
        for i in range(size - 2, -1, -1):  # c[i] = z * (c[i + 1] - c[i])
            np.subtract(c[:, i + 1], c[:, i], out=buf)
            np.multiply(buf, z32, out=c[:, i])
    return c


def _causal_start(c: np.ndarray, z: float, buf: np.ndarray) -> None:
    """scipy's ``_init_causal_reflect``: c[0] += z/(1-z^2n) * sum z^i (c[i] + z^n c[n-1-i])."""
    size = c.shape[1]
    zn = z**size
    terms = min(size, int(np.ceil(np.log(_INIT_TOL) / np.log(abs(z)))) + 1)
    acc = np.zeros_like(buf)
    zi = 1.0
    for i in range(terms):
        np.multiply(c[:, i], np.float32(zi), out=buf)
        np.add(acc, buf, out=acc)
        if abs(zi * zn) > _INIT_TOL:
            np.multiply(c[:, size - 1 - i], np.float32(zi * zn), out=buf)
            np.add(acc, buf, out=acc)
        zi *= z
    np.multiply(acc, np.float32(z / (1.0 - zn * zn)), out=acc)
    np.add(c[:, 0], acc, out=c[:, 0])


def _interpolate(
    coef: np.ndarray, start: np.ndarray, weights: np.ndarray, n_out: int
) -> np.ndarray:
    """(P, n_coef, Q) coefficients → (P, n_out, Q): y[k] = sum_t w[k, t] * coef[start[k] + t].

    The taps are added in ascending t, one element-wise multiply and add each (chunks of
    the rows only change which elements are computed when, never how).
    """
    y = np.empty((coef.shape[0], n_out, coef.shape[2]), dtype=np.float32)
    step = max(1, _CHUNK // coef.shape[0])
    buf = np.empty((coef.shape[0], min(step, coef.shape[2])), dtype=np.float32)
    for q0 in range(0, coef.shape[2], step):
        c = coef[:, :, q0 : q0 + step]
        part = y[:, :, q0 : q0 + step]
        tmp = buf[:, : c.shape[2]]
        for k in range(n_out):
            s = int(start[k])
            row = part[:, k]
            np.multiply(c[:, s], weights[k, 0], out=row)
            for t in range(1, weights.shape[1]):
                np.multiply(c[:, s + t], weights[k, t], out=tmp)
                np.add(row, tmp, out=row)
    return y


def _swap(x3: np.ndarray) -> np.ndarray:
    """(A, B, C) → contiguous (B, A, C), copied in blocks of A (a transposing copy)."""
    out = np.empty((x3.shape[1], x3.shape[0], x3.shape[2]), dtype=x3.dtype)
    for a0 in range(0, x3.shape[0], _SWAP_ROWS):
        out[:, a0 : a0 + _SWAP_ROWS] = x3[a0 : a0 + _SWAP_ROWS].transpose(1, 0, 2)
    return out
