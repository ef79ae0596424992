"""Lesion-wise F1 and surface Dice on masks whose answers are counted by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pgps_train.comparison.metrics import case_scores, lesion_f1, surface_dice


def cubes(shape, corners, size=3):
    m = np.zeros(shape, bool)
    for z, y, x in corners:
        m[z:z + size, y:y + size, x:x + size] = True
    return m


def test_lesion_f1_counts_components_not_voxels():
    ref = cubes((30, 30, 30), [(1, 1, 1), (10, 10, 10), (20, 20, 20)])  # 3 lesions
    # hits lesion 1 with one voxel, misses 2 and 3, adds two false lesions
    pred = cubes((30, 30, 30), [(2, 2, 2), (1, 20, 1), (25, 1, 1)], size=2)
    pred[2:4, 2:4, 2:4] = False
    pred[3, 3, 3] = True  # one voxel inside lesion 1
    # recall 1/3, precision 1/3 (of 3 predicted components one overlaps) -> F1 1/3
    assert lesion_f1(pred, ref) == pytest.approx(1 / 3)
    assert lesion_f1(ref, ref) == 1.0
    assert lesion_f1(np.zeros_like(ref), ref) == 0.0
    assert lesion_f1(ref, np.zeros_like(ref)) == 0.0
    assert lesion_f1(np.zeros_like(ref), np.zeros_like(ref)) is None


def test_a_diagonal_neighbour_is_the_same_lesion():
    ref = np.zeros((5, 5, 5), bool)
    ref[1, 1, 1] = ref[2, 2, 2] = True  # touching by a corner: one lesion (26-connected)
    pred = np.zeros_like(ref)
    pred[1, 1, 1] = True
    assert lesion_f1(pred, ref) == 1.0  # recall 1/1, precision 1/1


def test_surface_dice_tolerates_a_shift_within_the_tolerance_only():
    ref = cubes((24, 24, 24), [(6, 6, 6)], size=8)
    shifted = np.roll(ref, 1, axis=2)
    assert surface_dice(ref, ref, (1, 1, 1)) == 1.0
    assert surface_dice(shifted, ref, (1, 1, 1), tolerance_mm=1.0) == 1.0
    far = surface_dice(np.roll(ref, 4, axis=2), ref, (1, 1, 1), tolerance_mm=1.0)
    assert 0.2 < far < 0.8
    # the same 1-voxel shift is 3 mm at 3 mm spacing: outside a 1 mm tolerance
    assert surface_dice(shifted, ref, (1, 1, 3), tolerance_mm=1.0) < 0.9
    assert surface_dice(np.zeros_like(ref), np.zeros_like(ref), (1, 1, 1)) is None
    assert surface_dice(np.zeros_like(ref), ref, (1, 1, 1)) == 0.0


def test_case_scores_use_the_scored_classes_and_skip_the_ignore_label():
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[2:12, 2:12, 2:12] = 1
    ref[4:6, 4:6, 4:6] = 2
    ref[15:18, 15:18, 15:18] = 2
    ref[0] = 9  # ignore
    pred = ref.copy()
    pred[15:18, 15:18, 15:18] = 1  # the second lesion missed (called organ)
    pred[0] = 2  # predictions on ignored voxels do not count
    out = case_scores(pred, ref, {"background": 0, "organ": 1, "lesion": 2, "ignore": 9},
                      (1.0, 1.0, 1.0))
    assert set(out) == {"lesion_f1", "nsd"} and set(out["lesion_f1"]) == {"organ", "lesion"}
    assert out["lesion_f1"]["lesion"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)  # R 1/2, P 1/1
    # organ: the predicted extra cube is a second organ component touching no reference
    # organ voxel -> recall 1/1, precision 1/2
    assert out["lesion_f1"]["organ"] == pytest.approx(2 / 3)
    assert out["nsd"]["lesion"] < 1.0 and out["nsd"]["organ"] < 1.0
    with pytest.raises(ValueError, match="shape"):
        case_scores(pred[1:], ref, {"background": 0, "organ": 1}, (1, 1, 1))
