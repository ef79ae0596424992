"""Per-case scores beyond Dice for `pgps-compare`: lesion-wise detection F1 and the
normalised surface Dice.

The PGPS papers' largest gains are on small, rare lesions, where voxel Dice is dominated by
the big ones; a comparison therefore also counts lesions. Both scores take the same class
masks as :func:`pgps_train.evaluate.dice_scores` (a region is the union of its values, the
ignore label is left out) and return None where the class is absent from both the
prediction and the reference, so means skip it as they skip Dice.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from pgps_train.evaluate import LabelsLike, as_labels

_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)  # 26-connected lesions, as nnU-Net's tools


def lesion_f1(pred: np.ndarray, ref: np.ndarray) -> float | None:
    """Lesion-wise detection F1 of two boolean masks: connected components (26-neighbour);
    a reference lesion is found when any predicted voxel overlaps it, a predicted one is
    right when it overlaps any reference voxel. None when both masks are empty."""
    ref_parts, n_ref = ndimage.label(ref, structure=_CONNECTIVITY)
    pred_parts, n_pred = ndimage.label(pred, structure=_CONNECTIVITY)
    if n_ref == 0 and n_pred == 0:
        return None
    if n_ref == 0 or n_pred == 0:
        return 0.0
    found = np.unique(ref_parts[pred & (ref_parts > 0)]).size  # reference lesions hit
    right = np.unique(pred_parts[ref & (pred_parts > 0)]).size  # predicted lesions that hit
    recall, precision = found / n_ref, right / n_pred
    return 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)


def surface_dice(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                 tolerance_mm: float = 1.0) -> float | None:
    """MONAI's normalised surface Dice of two boolean masks at ``tolerance_mm`` (the share
    of both surfaces within the tolerance of the other, spacing in mm per axis). None when
    both masks are empty; 0 when only one is."""
    import torch
    from monai.metrics import compute_surface_dice

    if not pred.any() and not ref.any():
        return None
    if not pred.any() or not ref.any():
        return 0.0

    def one_hot(mask: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([~mask, mask])[None]).float()

    with warnings.catch_warnings():  # MONAI's deprecation notes about its own helpers
        warnings.simplefilter("ignore")
        score = compute_surface_dice(one_hot(pred), one_hot(ref), class_thresholds=[tolerance_mm],
                                     spacing=tuple(float(s) for s in spacing))
    return float(score[0, 0])


def case_scores(pred: np.ndarray, ref: np.ndarray, labels: LabelsLike,
                spacing: Sequence[float], *, tolerance_mm: float = 1.0,
                ignore_label: int | None = None) -> dict[str, dict[str, float | None]]:
    """``{"lesion_f1": {class: F1}, "nsd": {class: NSD}}`` of two (Z, Y, X) label maps,
    over the scored classes of ``labels`` (as :func:`~pgps_train.evaluate.dice_scores`)."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    labels = as_labels(labels, ignore_label)
    keep = None if labels.ignore_label is None else ref != labels.ignore_label
    out: dict[str, dict[str, float | None]] = {"lesion_f1": {}, "nsd": {}}
    for name, values in labels.scored().items():
        p, r = np.isin(pred, values), np.isin(ref, values)
        if keep is not None:
            p &= keep
            r &= keep
        out["lesion_f1"][name] = lesion_f1(p, r)
        out["nsd"][name] = surface_dice(p, r, spacing, tolerance_mm)
    return out
