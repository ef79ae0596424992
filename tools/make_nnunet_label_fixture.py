"""Write tests/fixtures/nnunet/label_resampling.npz: label maps resampled by nnU-Net itself.

Run it INSIDE the nnU-Net venv (``bash tools/nnunet_venv.sh`` builds .venv-nnunet)::

    .venv-nnunet/bin/python tools/make_nnunet_label_fixture.py [OUT.npz]

Small seeded phantoms (numpy only; this file never imports pgps): a body (the image's
non-zero region), an oblique organ that crosses the body's edge, a lesion on the organ's
edge and a thin oblique slab through both, so that two, three and four labels (with
nnU-Net's -1 outside the body) meet. Each case goes through nnU-Net 2.8.1's own
``crop_to_nonzero`` and ``resample_data_or_seg_to_shape`` with the segmentation settings
its planner writes into the plans (``is_seg=True, order=1, order_z=0,
force_separate_z=None``). tests/test_preprocess.py compares our preprocessing with the
result, voxel for voxel. Per case the file holds ``<name>/nonzero`` (bool, the image's
non-zero voxels), ``<name>/label`` (uint8), ``<name>/spacing``, ``<name>/target``,
``<name>/bbox`` and ``<name>/seg`` (int8, nnU-Net's output, -1 included), plus
``versions``.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np

# name: (shape (Z, Y, X), spacing, target spacing, seed)
CASES = {
    # source anisotropic (3.3 / 0.8 > 3): in plane per slice, nearest across slices
    "aniso_source": ((12, 40, 44), (3.3, 0.8, 0.8), (2.4, 1.05, 1.05), 1),
    # shrinking by exactly 2: weights 0.5 / 0.5, ties at every boundary voxel
    "even_factor": ((20, 44, 48), (0.5, 0.45, 0.45), (1.0, 0.9, 0.9), 2),
    # the same in plane only, slices kept (the z spacing decides: 2.0 / 0.45 > 3)
    "even_inplane": ((8, 44, 40), (2.0, 0.45, 0.45), (2.0, 0.9, 0.9), 5),
    # source isotropic, target anisotropic along X: the target decides the separate axis
    "aniso_target": ((16, 30, 24), (0.9, 0.9, 0.9), (1.3, 0.7, 3.1), 3),
    # non-integer factors on all three axes, some up, some down
    "mixed_3d": ((18, 34, 30), (1.2, 0.7, 0.8), (1.5, 0.9, 0.55), 4),
}
LABELS = (0, 1, 2, 3)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    a, b = rng.uniform(0.3, 0.7, 2)  # tens of degrees about two axes: oblique
    ra = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rb = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    return ra @ rb


def phantom(shape, spacing, seed) -> tuple[np.ndarray, np.ndarray]:
    """(nonzero bool, label uint8) of one case, in (Z, Y, X) voxels."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)],
                                indexing="ij"), axis=-1)
    extent = np.asarray(shape) * np.asarray(spacing)
    centre = extent / 2
    rel = grid - centre
    body = (rel[..., 1] / (0.42 * extent[1])) ** 2 + (rel[..., 2] / (0.40 * extent[2])) ** 2 <= 1
    body[0] = False  # a slice of air: something to crop
    for axis in range(3):  # even crop sizes, so that a factor of 2 is exactly 2 after the crop
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(body.any(axis=other))
        if (hit[-1] + 1 - hit[0]) % 2:
            spot = [n // 2 for n in shape]
            spot[axis] = hit[-1] + 1 if hit[-1] + 1 < shape[axis] else hit[0] - 1
            body[tuple(spot)] = True  # one more non-zero voxel (a marker on the table)
    label = np.zeros(shape, np.uint8)
    rot = _rotation(rng)
    edge = centre + np.array([0.0, 0.30 * extent[1], 0.05 * extent[2]])  # near the body edge
    for value, where, semi in ((1, edge, (0.30, 0.22, 0.18)),
                               (2, edge + np.array([0.0, -0.12, 0.10]) * extent, (0.10, 0.08, 0.07))):
        q = (grid - where) @ rot.T / (np.asarray(semi) * extent)
        label[(q**2).sum(-1) <= 1] = value
    normal = rot @ np.array([0.3, 0.5, 0.8])
    slab = np.abs((grid - edge) @ (normal / np.linalg.norm(normal))) <= 0.9 * min(spacing)
    label[slab & (label > 0)] = 3
    return body, label


def nnunet_seg(nonzero, label, spacing, target) -> tuple[np.ndarray, list]:
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
    from nnunetv2.preprocessing.resampling.default_resampling import (
        compute_new_shape,
        resample_data_or_seg_to_shape,
    )

    data = nonzero[None].astype(np.float32)
    seg = label[None].astype(np.int8)
    data, seg, bbox = crop_to_nonzero(data, seg)
    new_shape = compute_new_shape(data.shape[1:], spacing, target)
    out = resample_data_or_seg_to_shape(seg, new_shape, spacing, target, is_seg=True, order=1,
                                        order_z=0, force_separate_z=None)
    return out[0].astype(np.int8), [[int(a), int(b)] for a, b in bbox]


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parent.parent
    out = Path(argv[0]) if argv else root / "tests" / "fixtures" / "nnunet" / "label_resampling.npz"
    arrays: dict[str, np.ndarray] = {}
    for name, (shape, spacing, target, seed) in CASES.items():
        nonzero, label = phantom(shape, spacing, seed)
        seg, bbox = nnunet_seg(nonzero, label, list(spacing), list(target))
        arrays.update({f"{name}/nonzero": nonzero, f"{name}/label": label,
                       f"{name}/spacing": np.array(spacing), f"{name}/target": np.array(target),
                       f"{name}/bbox": np.array(bbox), f"{name}/seg": seg})
        print(f"{name}: {label.shape} -> {seg.shape}, labels {sorted(np.unique(seg).tolist())}",
              file=sys.stderr)
    versions = {p: version(p) for p in ("nnunetv2", "batchgenerators", "scipy", "scikit-image",
                                        "numpy")}
    arrays["versions"] = np.array(json.dumps(versions))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({out.stat().st_size} bytes): {versions}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
