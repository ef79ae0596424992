"""Seeded CT-like phantom datasets: the embedded default data of the demo, tests and benchmarks.

Each case is a torso-like body (soft tissue ~40 HU, a fat rim, a spine) in air (-1000 HU)
inside a field of view, with a zero-valued margin outside it on some sides (so cropping to
the non-zero bounding box really crops), an organ (label 1, ``organ_fraction`` of the voxels)
and a few small bright lesions inside it (label 2, at most 0.1 % of the voxels: rare but
learnable). An optional second channel is MR-like (zero background, other contrasts, a bias
field and a per-case scale/offset, so per-case z-scoring matters).

Every case has its own anisotropic spacing and a non-identity affine (a few degrees of
oblique rotation, the usual LPS-style flips, a non-zero origin), so conversion really
resamples. Same arguments and seed give byte-identical files (gzip mtime is fixed at 0).
Arrays are (Z, Y, X) = the file's voxel axes slowest-first (k, j, i); spacings likewise.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from pgps_data.errors import PGPSInputError

__all__ = ["SyntheticCase", "case_spacing", "main", "synthetic_case", "write_synthetic_dataset"]

NOMINAL_SPACING = (2.25, 0.75, 0.75)  # centre of the spacing ranges below, (Z, Y, X) mm
LESION_BUDGET = 0.001  # lesions never exceed this fraction of a case's voxels
CHANNEL_NAMES = ("CT", "MR")
FILE_ENDINGS = (".nii.gz", ".nrrd", ".mha")
_MARKER = "pgps-synth"  # first word of dataset.json "description"; marks a rerunnable dir


@dataclass(frozen=True)
class SyntheticCase:
    """One phantom in memory: ``images`` (Z, Y, X) per channel (CT int16, MR float32),
    ``label`` (Z, Y, X) uint8, ``spacing`` (Z, Y, X) mm and the 4x4 RAS ``affine`` mapping
    (i, j, k, 1) to mm as nibabel reports it."""

    case_id: str
    images: tuple[np.ndarray, ...]
    label: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray

    @property
    def image(self) -> np.ndarray:
        """All channels stacked as float32 (C, Z, Y, X)."""
        return np.stack([c.astype(np.float32) for c in self.images])


def case_spacing(seed: int, number: int) -> tuple[float, float, float]:
    """The (Z, Y, X) spacing of case ``number``: z in 1.5-3.0 mm, in-plane 0.6-0.9 mm."""
    rng = np.random.default_rng([seed, number, 1])
    z, xy = rng.uniform(1.5, 3.0), rng.uniform(0.6, 0.9)
    return (round(float(z), 4), round(float(xy), 4), round(float(xy), 4))


def synthetic_case(number: int = 0, *, size: Sequence[int] = (64, 128, 128), channels: int = 1,
                   organ_fraction: float = 0.03, lesions: int = 3, seed: int = 0,
                   ignore: bool = False,
                   median_spacing: Sequence[float] = NOMINAL_SPACING) -> SyntheticCase:
    """Generate case ``number`` in memory; ``size`` is its approximate shape at
    ``median_spacing`` (the dataset writer passes the training cases' median)."""
    _check(size, channels, organ_fraction, lesions, seed)
    rng = np.random.default_rng([seed, number, 2])
    spacing = np.array(case_spacing(seed, number))
    extent = np.asarray(size) * np.asarray(median_spacing) * rng.uniform(0.87, 1.13, 3)
    shape = tuple(int(v) for v in np.maximum(8, np.rint(extent / spacing)))
    tissue, organ, lesion = _anatomy(rng, shape, spacing, organ_fraction, lesions)
    label = np.zeros(shape, np.uint8)
    label[organ] = 1
    label[lesion] = 2
    if ignore:
        _mark_ignore(rng, label, lesion)
    images = [_ct(rng, tissue, organ, lesion, spacing)]
    if channels == 2:
        images.append(_mr(rng, tissue, organ, lesion, spacing))
    return SyntheticCase(f"synth_{number:03d}", tuple(images), label,
                         tuple(float(s) for s in spacing), _affine(rng, shape, spacing))


def write_synthetic_dataset(out_dir: str | Path, *, cases: int = 8, test_cases: int = 2,
                            size: Sequence[int] = (64, 128, 128), channels: int = 1,
                            organ_fraction: float = 0.03, lesions: int = 3, seed: int = 0,
                            layout: str = "msd", file_ending: str = ".nii.gz",
                            ignore: bool = False, regions: bool = False,
                            progress: Callable[[str], None] | None = None) -> Path:
    """Write a seeded phantom dataset in the MSD layout (default) or nnU-Net v2 raw layout
    and return its directory. Training ids are ``synth_000``...; test ids start at the next
    multiple of 100, so they never collide. ``progress`` is called with each case id written.
    A directory holding an earlier pgps-synth dataset is refreshed (its old case files go);
    any other non-empty directory is refused."""
    _check(size, channels, organ_fraction, lesions, seed)
    out = Path(out_dir)
    if layout not in ("msd", "nnunet") or file_ending not in FILE_ENDINGS:
        raise PGPSInputError(f"{out}: unknown layout {layout!r} or file ending {file_ending!r} "
                             f"(use msd or nnunet, and one of {', '.join(FILE_ENDINGS)})")
    if layout == "msd" and (file_ending != ".nii.gz" or regions):
        raise PGPSInputError(f"{out}: the MSD layout has only .nii.gz files and no regions "
                             "(use --layout nnunet)")
    if cases < 1 or test_cases < 0:
        raise PGPSInputError(f"{out}: need at least one training case and no negative test "
                             "count (fix --cases/--test-cases)")
    _prepare(out)
    train = list(range(cases))
    first_test = 100 * (cases // 100 + 1)
    test = list(range(first_test, first_test + test_cases))
    median = np.median([case_spacing(seed, n) for n in train], axis=0)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for number in train + test:
        case = synthetic_case(number, size=size, channels=channels, organ_fraction=organ_fraction,
                              lesions=lesions, seed=seed, ignore=ignore and number in train,
                              median_spacing=median)
        cid, folder = case.case_id, out / ("imagesTr" if number in train else "imagesTs")
        if layout == "msd":  # one file; two channels as one 4D float32 NIfTI, channel last
            both = np.stack(case.images, -1).astype(np.float32)
            _write(folder / f"{cid}.nii.gz", both if channels == 2 else case.images[0], case)
        else:  # one file per channel
            for c, image in enumerate(case.images):
                _write(folder / f"{cid}_{c:04d}{file_ending}", image, case)
        if number in train:
            _write(out / "labelsTr" / f"{cid}{file_ending}", case.label, case)
        if progress is not None:
            progress(cid)
    meta = _dataset_json(layout, train, test, channels, file_ending, ignore, regions,
                         f"{_MARKER} seed={seed} size={tuple(size)} "
                         f"organ_fraction={organ_fraction} lesions={lesions}")
    (out / "dataset.json").write_text(json.dumps(meta, indent=4) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    """The ``pgps-synth`` console script: write a phantom dataset and say what was written."""
    p = argparse.ArgumentParser(prog="pgps-synth", description="Write a seeded CT-like phantom "
                                "dataset (organ + rare lesions), MSD or nnU-Net v2 raw layout.")
    p.add_argument("out_dir", type=Path, help="new or empty directory, or an earlier output")
    p.add_argument("--cases", type=int, default=8, help="training cases (default 8)")
    p.add_argument("--test-cases", type=int, default=2, help="unlabelled test cases (default 2)")
    p.add_argument("--size", type=int, nargs=3, default=(64, 128, 128), metavar=("Z", "Y", "X"),
                   help="approximate voxel shape at the median spacing (default 64 128 128)")
    p.add_argument("--channels", type=int, choices=(1, 2), default=1, help="1: CT; 2: CT + MR")
    p.add_argument("--organ-fraction", type=float, default=0.03,
                   help="organ voxels / all voxels (default 0.03)")
    p.add_argument("--lesions", type=int, default=3, help="lesions per case (default 3)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--layout", choices=("msd", "nnunet"), default="msd", help="default msd")
    p.add_argument("--file-ending", choices=FILE_ENDINGS, default=".nii.gz",
                   help="nnunet layout only; .nrrd/.mha are written with SimpleITK")
    p.add_argument("--ignore", action="store_true",
                   help="add an 'ignore' label (3) on a few slabs away from the lesions")
    p.add_argument("--regions", action="store_true",
                   help="nnunet layout only: labels as regions (organ_and_lesion, lesion)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    from tqdm import tqdm
    try:
        with tqdm(total=max(0, a.cases) + max(0, a.test_cases), unit="case", delay=2.0,
                  file=sys.stderr, leave=False) as bar:
            out = write_synthetic_dataset(
                a.out_dir, cases=a.cases, test_cases=a.test_cases, size=tuple(a.size),
                channels=a.channels, organ_fraction=a.organ_fraction, lesions=a.lesions,
                seed=a.seed, layout=a.layout, file_ending=a.file_ending, ignore=a.ignore,
                regions=a.regions, progress=lambda _id: bar.update(1))
    except PGPSInputError as e:
        print(f"pgps-synth: error: {e}", file=sys.stderr)
        return 2
    n_files = sum(1 for f in out.rglob("*") if f.is_file())
    print(f"wrote {a.cases} training + {a.test_cases} test cases ({a.layout} layout, "
          f"{a.channels} channel(s), {a.file_ending}) to {out}: {n_files} files, "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


# ---------------------------------------------------------------- anatomy and intensities


def _check(size: Sequence[int], channels: int, organ_fraction: float, lesions: int,
           seed: int) -> None:
    for bad, problem in (
            (len(size) != 3 or min(size) < 8, f"size {tuple(size)} (give three values >= 8)"),
            (channels not in (1, 2), f"channels={channels} (use 1 or 2)"),
            (not 0 < organ_fraction <= 0.2, f"organ fraction {organ_fraction} (use 0 < F <= 0.2)"),
            (lesions < 0 or seed < 0, f"lesions={lesions}, seed={seed} (use values >= 0)")):
        if bad:
            raise PGPSInputError(f"pgps-synth: {problem}")


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


def _anatomy(rng: np.random.Generator, shape: tuple[int, ...], spacing: np.ndarray,
             organ_fraction: float, n_lesions: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    lesion = _lesions(rng, organ, spacing, n_lesions)
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
             n: int) -> np.ndarray:
    """``n`` small spheres (radius 2-4 mm) strictly inside the organ (each with a one-voxel
    organ shell), shrunk or dropped so that together they stay within the lesion budget."""
    lesion = np.zeros(organ.shape, bool)
    if n == 0 or not organ.any():
        return lesion
    lo = np.array([np.flatnonzero(organ.any(axis=a))[0] for a in ((1, 2), (0, 2), (0, 1))])
    hi = np.array([np.flatnonzero(organ.any(axis=a))[-1] + 1 for a in ((1, 2), (0, 2), (0, 1))])
    lo, hi = np.maximum(lo - 1, 0), np.minimum(hi + 1, organ.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    dist = ndimage.distance_transform_edt(organ[box], sampling=spacing)
    smax, budget = float(spacing.max()), int(LESION_BUDGET * organ.size)
    used = 0
    for _ in range(n):
        radius = max(0.0, min(rng.uniform(2.0, 4.0), float(dist.max()) - smax - 1e-3))
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


def _mark_ignore(rng: np.random.Generator, label: np.ndarray, lesion: np.ndarray) -> None:
    """Mark two axial slabs as unannotated (label 3), two or more slices away from lesions."""
    nz = label.shape[0]
    t = max(1, nz // 20)
    near = np.zeros(nz + t, bool)
    for z in np.flatnonzero(lesion.any(axis=(1, 2))):
        near[max(0, z - t - 2): z + 3] = True
    starts = np.flatnonzero(~near[: nz - t + 1])
    for z in rng.choice(starts, size=min(2, starts.size), replace=False):
        label[z: z + t] = 3


def _ct(rng: np.random.Generator, tissue: np.ndarray, organ: np.ndarray, lesion: np.ndarray,
        spacing: np.ndarray) -> np.ndarray:
    """Hounsfield units as int16: 0 outside the FOV, air -1000, fat -100, soft tissue 40,
    bone ~500, organ ~115, lesions ~65 HU brighter than their organ; smooth texture + noise."""
    hu = np.array([0, -1000, -100, 40, rng.uniform(400, 700)], np.float32)
    ct = hu[tissue]
    organ_hu = rng.uniform(100, 130)
    ct[organ] = organ_hu
    ct[lesion] = organ_hu + rng.uniform(50, 80)
    body = tissue >= 2
    noise = rng.standard_normal(ct.shape, dtype=np.float32)
    noise *= rng.uniform(8, 15)
    noise += 8 * _smooth_noise(rng, ct.shape, spacing, 8.0)
    ct += np.where(body, noise, 0.4 * noise)
    ct[tissue == 0] = 0
    return np.clip(np.rint(ct), -1024, 3071).astype(np.int16)


def _mr(rng: np.random.Generator, tissue: np.ndarray, organ: np.ndarray, lesion: np.ndarray,
        spacing: np.ndarray) -> np.ndarray:
    """MR-like float32: zero outside the body, fat bright, organ dark, lesions bright,
    a smooth bias field, Rician-like noise and a per-case scale and offset."""
    rel = np.array([0, 0, 1.8, 1.0, 0.25], np.float32)
    mr = rel[tissue]
    mr[organ] = 0.65
    mr[lesion] = 1.6
    body = tissue >= 2
    mr *= np.exp(0.15 * _smooth_noise(rng, mr.shape, spacing, 120.0))
    mr += 0.05 * rng.standard_normal(mr.shape, dtype=np.float32)
    scale, offset = rng.uniform(200, 2000), rng.uniform(0, 300)
    mr = np.abs(mr) * scale + offset
    mr[~body] = 0
    return mr.astype(np.float32)


# ---------------------------------------------------------------- geometry and files


def _affine(rng: np.random.Generator, shape: tuple[int, ...], spacing: np.ndarray) -> np.ndarray:
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


def _write(path: Path, array: np.ndarray, case: SyntheticCase) -> None:
    """Write a (Z, Y, X) or (Z, Y, X, C) array in ``case``'s geometry, deterministically."""
    if path.name.endswith(".nii.gz"):
        import nibabel as nib
        data = np.ascontiguousarray(array.transpose(2, 1, 0, *range(3, array.ndim)))
        img = nib.Nifti1Image(data, case.affine)
        img.set_qform(case.affine, code=1)
        img.set_sform(case.affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
        path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=1, mtime=0))
        return
    import SimpleITK as sitk
    lps = np.diag([-1.0, -1.0, 1.0])
    direction = lps @ case.affine[:3, :3] / np.asarray(case.spacing[::-1])
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in case.spacing[::-1]))
    img.SetOrigin(tuple(float(v) for v in lps @ case.affine[:3, 3]))
    img.SetDirection(tuple(float(v) for v in direction.ravel()))
    sitk.WriteImage(img, str(path), useCompression=True)


def _dataset_json(layout: str, train: list[int], test: list[int], channels: int,
                  file_ending: str, ignore: bool, regions: bool, description: str) -> dict:
    names = {str(c): CHANNEL_NAMES[c] for c in range(channels)}
    if layout == "msd":
        labels = {"0": "background", "1": "organ", "2": "lesion"}
        if ignore:
            labels["3"] = "ignore"
        return {
            "name": "PGPSSynthetic", "description": description,
            "reference": "pgps synthetic phantoms", "licence": "CC0", "release": "1.0",
            "tensorImageSize": "4D" if channels == 2 else "3D", "modality": names,
            "labels": labels, "numTraining": len(train), "numTest": len(test),
            "training": [{"image": f"./imagesTr/synth_{n:03d}.nii.gz",
                          "label": f"./labelsTr/synth_{n:03d}.nii.gz"} for n in train],
            "test": [f"./imagesTs/synth_{n:03d}.nii.gz" for n in test],
        }
    nn_labels: dict[str, int | list[int]] = (
        {"background": 0, "organ_and_lesion": [1, 2], "lesion": 2} if regions
        else {"background": 0, "organ": 1, "lesion": 2})
    if ignore:
        nn_labels["ignore"] = 3
    meta: dict = {"name": "PGPSSynthetic", "description": description,
                  "channel_names": names, "labels": nn_labels,
                  "numTraining": len(train), "file_ending": file_ending}
    if regions:
        meta["regions_class_order"] = [1, 2]
    return meta


def _prepare(out: Path) -> None:
    """Refuse a path that exists, is not empty and is not an earlier pgps-synth output; in
    one that is, remove the old case files so no stale case survives a smaller rerun."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    try:
        ours = json.loads((out / "dataset.json").read_text())["description"].startswith(_MARKER)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        ours = False
    if not ours:
        raise PGPSInputError(f"{out}: exists, is not empty and holds no pgps-synth dataset "
                             "(choose a new or empty directory)")
    for f in sorted(out.glob("images*/synth_*")) + sorted(out.glob("labelsTr/synth_*")):
        f.unlink()


if __name__ == "__main__":
    raise SystemExit(main())
