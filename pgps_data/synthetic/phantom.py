"""The anatomy and intensities of one synthetic CT/MR phantom (pure numpy, seeded).

:mod:`pgps_data.synthetic.dataset` lays these out as MSD or nnU-Net datasets; this module draws a
case: tissue classes (field of view, air, fat, soft tissue, bone), an organ, small lesions
inside it, CT Hounsfield units and an MR-like channel, and an oblique affine. For the
BraTS-like region dataset a core shell around each lesion (:func:`core_shell`) nests
lesion ⊂ core ⊂ organ; it draws no random numbers, so the other datasets stay the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

LESION_BUDGET = 0.001  # lesions never exceed this fraction of a case's voxels


@dataclass(frozen=True)
class LesionSpec:
    """How a case's lesions are drawn: at most ``budget`` of its voxels, radii uniform in
    ``radius_mm``, CT contrast above the organ uniform in ``contrast_hu``: one draw per case,
    or with ``per_lesion`` one per lesion (connected component). The default is the
    phantom's historic draw (datasets made with it stay byte-identical)."""

    budget: float = LESION_BUDGET
    radius_mm: tuple[float, float] = (2.0, 4.0)
    contrast_hu: tuple[float, float] = (50.0, 80.0)
    per_lesion: bool = False


DEFAULT_LESIONS = LesionSpec()

# The embedded lesion benchmark: a strongly imbalanced class (<= 0.05 % of the voxels) of
# lesions of varied size (1.5-5 mm radius, the budget shrinks the large ones) and contrast
# (30-90 HU above the organ, per lesion; the noise is ~15 HU), so a short CPU run neither
# misses nor saturates it (at 20-80 HU constant mode missed the lesions of one seed in 704
# iterations).
LESION_BENCHMARK = LesionSpec(budget=0.0005, radius_mm=(1.5, 5.0), contrast_hu=(30.0, 90.0),
                              per_lesion=True)


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], spacing: np.ndarray,
                  cell_mm: float) -> np.ndarray:
    """Unit-variance-ish smooth noise: a coarse random grid (one node per ``cell_mm``)
    trilinearly upsampled with three small matrix products (cheap even for large volumes)."""
    coarse = [max(2, int(np.ceil(n * s / cell_mm)) + 1) for n, s in zip(shape, spacing)]
    out = rng.standard_normal(coarse, dtype=np.float32)
    mats = []
    for n_out, n_in in zip(shape, coarse):
        pos = np.linspace(0, n_in - 1, n_out)
        i0 = np.minimum(np.floor(pos).astype(int), n_in - 2)
        w = (pos - i0).astype(np.float32)
        m = np.zeros((n_out, n_in), np.float32)
        m[np.arange(n_out), i0], m[np.arange(n_out), i0 + 1] = 1 - w, w
        mats.append(m)
    out = np.tensordot(mats[0], out, axes=(1, 0))      # (Z, y, x)
    out = np.matmul(mats[1], out)                       # (Z, Y, x)
    return np.ascontiguousarray(np.matmul(out, mats[2].T))  # (Z, Y, X)


def anatomy(rng: np.random.Generator, shape: tuple[int, ...], spacing: np.ndarray,
             organ_fraction: float, n_lesions: int,
             spec: LesionSpec = DEFAULT_LESIONS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tissue classes (0 outside FOV, 1 air, 2 fat, 3 soft tissue, 4 bone), organ, lesions."""
    nz, ny, nx = shape
    # field of view: zero margin at the top slices and on one y side and one x side
    fz = rng.integers(1, max(2, nz // 10) + 1)
    fy, fx = (int(rng.integers(1, max(2, n // 12) + 1)) for n in (ny, nx))
    fov = (slice(0, nz - fz),
           slice(fy, ny) if rng.random() < 0.5 else slice(0, ny - fy),
           slice(fx, nx) if rng.random() < 0.5 else slice(0, nx - fx))
    tissue = np.zeros(shape, np.uint8)
    tissue[fov] = 1
    y0, y1 = fov[1].indices(ny)[:2]
    x0, x1 = fov[2].indices(nx)[:2]
    by = 0.40 * (y1 - y0) * spacing[1] * rng.uniform(0.88, 1.0)  # body semi-axes, mm
    bx = 0.45 * (x1 - x0) * spacing[2] * rng.uniform(0.88, 1.0)
    cy = ((y0 + y1 - 1) / 2 + rng.uniform(-0.02, 0.02) * (y1 - y0)) * spacing[1]
    cx = ((x0 + x1 - 1) / 2) * spacing[2]
    yy = (np.arange(ny) * spacing[1] - cy)[:, None]
    xx = (np.arange(nx) * spacing[2] - cx)[None, :]
    r2 = (yy / by) ** 2 + (xx / bx) ** 2                                     # (Y, X)
    zs = 1 - 0.06 * (1 + np.sin(np.linspace(0, np.pi * rng.uniform(0.5, 1.5), nz)
                                + rng.uniform(0, 2 * np.pi))) / 2        # slow taper in z
    rel = r2[None] / (zs ** 2)[:, None, None]
    inside = tissue == 1
    fat_rim = rng.uniform(0.80, 0.88) ** 2
    tissue[inside & (rel < 1)] = 2
    tissue[inside & (rel < fat_rim)] = 3
    spine = ((yy - 0.62 * by) ** 2 + xx ** 2) < (0.16 * min(by, bx)) ** 2  # (Y, X)
    tissue[inside & (rel < fat_rim) & spine[None]] = 4
    soft = tissue == 3
    organ = _organ(rng, soft, spacing, organ_fraction, cy, cx, by, bx)
    lesion = _lesions(rng, organ, spacing, n_lesions, spec)
    return tissue, organ, lesion


def _organ(rng: np.random.Generator, allowed: np.ndarray, spacing: np.ndarray, fraction: float,
           cy: float, cx: float, by: float, bx: float) -> np.ndarray:
    """A smoothly deformed ellipsoid holding exactly round(fraction * voxels) voxels of
    ``allowed`` (the soft tissue), off-centre to one side like a liver or spleen."""
    shape = allowed.shape
    z_vox = np.flatnonzero(allowed.any(axis=(1, 2)))
    zc = (z_vox[0] + (z_vox[-1] - z_vox[0]) * rng.uniform(0.35, 0.65)) * spacing[0]
    centre = np.array([zc, cy + rng.uniform(-0.2, 0.05) * by,
                       cx + rng.choice([-1, 1]) * rng.uniform(0.15, 0.3) * bx])
    target = round(fraction * allowed.size)
    q = np.array([rng.uniform(1.1, 1.5), rng.uniform(0.7, 0.9), rng.uniform(0.9, 1.2)])
    semi = q * (target * np.prod(spacing) / (4 / 3 * np.pi * np.prod(q))) ** (1 / 3)
    lo = np.maximum(0, np.floor((centre - 1.7 * semi) / spacing)).astype(int)
    hi = np.minimum(shape, np.ceil((centre + 1.7 * semi) / spacing) + 1).astype(int)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = [(np.arange(a, b) * s - c) / r
           for a, b, s, c, r in zip(lo, hi, spacing, centre, semi)]
    f = sub[0][:, None, None] ** 2 + sub[1][None, :, None] ** 2 + sub[2][None, None, :] ** 2
    f = f.astype(np.float32) + 0.3 * _smooth_noise(rng, f.shape, spacing, 25.0)
    f[~allowed[box]] = np.inf
    n_ok = int(np.count_nonzero(allowed[box]))
    organ = np.zeros(shape, bool)
    if target >= n_ok:
        organ[box] = allowed[box]
    elif target > 0:
        thr = np.partition(f.ravel(), target - 1)[target - 1]
        organ[box] = f <= thr
    return organ


def _lesions(rng: np.random.Generator, organ: np.ndarray, spacing: np.ndarray,
             n: int, spec: LesionSpec = DEFAULT_LESIONS) -> np.ndarray:
    """``n`` small spheres (radius in ``spec.radius_mm``, default 2-4 mm) strictly inside the
    organ (each with a one-voxel organ shell), shrunk or dropped so that together they stay
    within ``spec.budget``."""
    lesion = np.zeros(organ.shape, bool)
    if n == 0 or not organ.any():
        return lesion
    lo = np.array([np.flatnonzero(organ.any(axis=a))[0] for a in ((1, 2), (0, 2), (0, 1))])
    hi = np.array([np.flatnonzero(organ.any(axis=a))[-1] + 1 for a in ((1, 2), (0, 2), (0, 1))])
    lo, hi = np.maximum(lo - 1, 0), np.minimum(hi + 1, organ.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    dist = ndimage.distance_transform_edt(organ[box], sampling=spacing)
    smax, budget = float(spacing.max()), int(spec.budget * organ.size)
    used = 0
    for _ in range(n):
        radius = max(0.0, min(rng.uniform(*spec.radius_mm), float(dist.max()) - smax - 1e-3))
        ok = np.flatnonzero(dist.ravel() > radius + smax)
        if ok.size == 0:
            break
        c = np.array(np.unravel_index(ok[rng.integers(ok.size)], dist.shape)) + lo
        while True:
            sphere, sbox = _sphere(c, radius, spacing, organ.shape)
            count = int(np.count_nonzero(sphere & ~lesion[sbox]))
            if used + count <= budget or radius < 0.3 * spacing.min():
                break
            radius *= 0.75
        if used + count > budget:
            break
        lesion[sbox] |= sphere
        used += count
    return lesion & organ


def _sphere(c: np.ndarray, radius: float, spacing: np.ndarray,
            shape: tuple[int, ...]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Voxels within ``radius`` mm of voxel ``c`` (always including ``c``), in a local box."""
    h = np.ceil(radius / spacing).astype(int)
    lo, hi = np.maximum(c - h, 0), np.minimum(c + h + 1, shape)
    g = [((np.arange(a, b) - cc) * s) ** 2 for a, b, cc, s in zip(lo, hi, c, spacing)]
    d2 = g[0][:, None, None] + g[1][None, :, None] + g[2][None, None, :]
    return d2 <= radius ** 2, tuple(slice(a, b) for a, b in zip(lo, hi))


CORE_MM = 2.5  # the core shell: organ voxels within this distance of a lesion


def core_shell(organ: np.ndarray, lesion: np.ndarray, spacing: np.ndarray,
               mm: float = CORE_MM) -> np.ndarray:
    """Organ voxels outside the lesions but within ``mm`` of one (deterministic)."""
    shell = np.zeros(organ.shape, bool)
    if not lesion.any():
        return shell
    pad = np.ceil(mm / spacing).astype(int) + 1
    lo = [max(0, int(np.flatnonzero(lesion.any(axis=a))[0]) - p)
          for a, p in zip(((1, 2), (0, 2), (0, 1)), pad)]
    hi = [min(n, int(np.flatnonzero(lesion.any(axis=a))[-1]) + 1 + p)
          for a, p, n in zip(((1, 2), (0, 2), (0, 1)), pad, organ.shape)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))  # the distances only matter near lesions
    dist = ndimage.distance_transform_edt(~lesion[box], sampling=spacing)
    shell[box] = (dist <= mm) & organ[box] & ~lesion[box]
    return shell


def mark_ignore(rng: np.random.Generator, label: np.ndarray, lesion: np.ndarray,
                value: int = 3) -> None:
    """Mark two axial slabs as unannotated (label ``value``), two or more slices away from
    ``lesion``."""
    nz = label.shape[0]
    t = max(1, nz // 20)
    near = np.zeros(nz + t, bool)
    for z in np.flatnonzero(lesion.any(axis=(1, 2))):
        near[max(0, z - t - 2): z + 3] = True
    starts = np.flatnonzero(~near[: nz - t + 1])
    for z in rng.choice(starts, size=min(2, starts.size), replace=False):
        label[z: z + t] = value


def ct_image(rng: np.random.Generator, tissue: np.ndarray, organ: np.ndarray, lesion: np.ndarray,
        spacing: np.ndarray, core: np.ndarray | None = None,
        spec: LesionSpec = DEFAULT_LESIONS) -> np.ndarray:
    """Hounsfield units as int16: 0 outside the FOV, air -1000, fat -100, soft tissue 40,
    bone ~500, organ ~115, lesions brighter than their organ by ``spec.contrast_hu`` (default
    50-80 HU; a ``core`` shell half as much); smooth texture + noise."""
    hu = np.array([0, -1000, -100, 40, rng.uniform(400, 700)], np.float32)
    ct = hu[tissue]
    organ_hu = rng.uniform(100, 130)
    ct[organ] = organ_hu
    brighter = rng.uniform(*spec.contrast_hu)
    ct[lesion] = organ_hu + brighter
    if spec.per_lesion:  # every lesion its own contrast (the case draw stays the first)
        components, n = ndimage.label(lesion, structure=np.ones((3, 3, 3), bool))
        if n > 1:
            contrast = np.concatenate([[0.0, brighter], rng.uniform(*spec.contrast_hu, n - 1)])
            ct[lesion] = organ_hu + contrast[components[lesion]].astype(np.float32)
    if core is not None:
        ct[core] = organ_hu + brighter / 2
    body = tissue >= 2
    noise = rng.standard_normal(ct.shape, dtype=np.float32)
    noise *= rng.uniform(8, 15)
    noise += 8 * _smooth_noise(rng, ct.shape, spacing, 8.0)
    ct += np.where(body, noise, 0.4 * noise)
    ct[tissue == 0] = 0
    return np.clip(np.rint(ct), -1024, 3071).astype(np.int16)


def mr_image(rng: np.random.Generator, tissue: np.ndarray, organ: np.ndarray, lesion: np.ndarray,
        spacing: np.ndarray, core: np.ndarray | None = None) -> np.ndarray:
    """MR-like float32: zero outside the body, fat bright, organ dark, lesions bright (a
    ``core`` shell in between), a smooth bias field, Rician-like noise and a per-case scale
    and offset."""
    rel = np.array([0, 0, 1.8, 1.0, 0.25], np.float32)
    mr = rel[tissue]
    mr[organ] = 0.65
    mr[lesion] = 1.6
    if core is not None:
        mr[core] = 1.1
    body = tissue >= 2
    mr *= np.exp(0.15 * _smooth_noise(rng, mr.shape, spacing, 120.0))
    mr += 0.05 * rng.standard_normal(mr.shape, dtype=np.float32)
    scale, offset = rng.uniform(200, 2000), rng.uniform(0, 300)
    mr = np.abs(mr) * scale + offset
    mr[~body] = 0
    return mr.astype(np.float32)


# ---------------------------------------------------------------- geometry and files


def oblique_affine(rng: np.random.Generator, shape: tuple[int, ...], spacing: np.ndarray) -> np.ndarray:
    """RAS affine of (i, j, k): rotation of 2-5 degrees about a random axis, times the usual
    DICOM-to-RAS flips of i and j, times the voxel size; origin away from zero."""
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(2, 5)) * rng.choice([-1, 1])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([-1.0, -1.0, 1.0]) @ np.diag(spacing[::-1])
    half = np.asarray(shape[::-1]) * spacing[::-1] / 2
    a[:3, 3] = [half[0] + rng.uniform(5, 30), half[1] + rng.uniform(10, 60),
                -rng.uniform(100, 600)]
    return a
