"""Foreground indices by nnU-Net's rule.

For a label with n voxels nnU-Net stores max(min(10000, n), ceil(0.01 * n)) of their
coordinates, drawn without replacement with a fixed seed; the loader centres
foreground-forced crops on them. We keep the rule exactly and fix the seed per case
(derived from the case id), so a rerun of the conversion writes the same indices.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

MIN_SAMPLES = 10_000
MIN_FRACTION = 0.01


def index_count(n: int) -> int:
    """How many coordinates nnU-Net keeps for a label with ``n`` voxels."""
    if n <= 0:
        return 0
    return max(min(MIN_SAMPLES, n), math.ceil(MIN_FRACTION * n))


def case_seed(case_id: str) -> int:
    """A stable per-case seed (crc32 of the id), so indices are reproducible."""
    return zlib.crc32(case_id.encode("utf-8"))


def sample_coordinates(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(k, 3) int32 coordinates of ``mask``'s voxels, k by nnU-Net's count rule."""
    flat = np.flatnonzero(mask.ravel())
    k = index_count(flat.size)
    if k == 0:
        return np.zeros((0, 3), np.int32)
    if k < flat.size:
        flat = np.sort(rng.choice(flat, size=k, replace=False))
    return np.stack(np.unravel_index(flat, mask.shape), axis=1).astype(np.int32)


def foreground_indices(
    label: np.ndarray, values: list[int], case_id: str, ignore_label: int | None = None
) -> tuple[dict[int, np.ndarray], np.ndarray | None, dict[int, int]]:
    """Sampled coordinates per label value, annotated voxels and exact voxel counts.

    Returns ``(indices, annotated, counts)``: ``indices[v]`` is (k, 3) int32 (empty for
    an absent label); ``annotated`` is the sampled non-ignore voxels when an ignore label
    exists, else None; ``counts[v]`` the exact number of voxels of each value.
    """
    rng = np.random.default_rng(case_seed(case_id))
    counts_all = np.bincount(label.ravel(), minlength=max([*values, ignore_label or 0]) + 1)
    indices: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for v in values:
        counts[v] = int(counts_all[v])
        indices[v] = (
            sample_coordinates(label == v, rng) if counts[v] else np.zeros((0, 3), np.int32)
        )
    annotated = None
    if ignore_label is not None:
        counts[ignore_label] = int(counts_all[ignore_label])
        annotated = sample_coordinates(label != ignore_label, rng)
    return indices, annotated, counts
