"""Per-label Dice of predicted label maps against reference labels (nnU-Net's rules).

Scores are MONAI's Dice (:func:`monai.metrics.compute_dice`) on one binary channel per
scored label (:meth:`pgps_data.labels.Labels.scored`): a plain label is the voxels of its
value, a region (a label whose value is a list) the union of its values. Background
(value 0) and the ``ignore`` label are not scored; voxels where the *reference* holds the ignore label are excluded from both
prediction and reference. Dice is None (JSON null) when prediction and reference are both
empty for a label — nnU-Net reports NaN there — and 0.0 when only one of them is. Means
over cases skip None; ``foreground_mean`` is the mean of the per-label means (nnU-Net's
definition).

``pgps-evaluate PRED_DIR LABEL_DIR`` takes the labels from ``--labels`` (a dataset.json
in MSD or nnU-Net form, read by :meth:`~pgps_data.labels.Labels.from_json_file` with the
conversion's checks) or else from ``PRED_DIR/labels.json`` (written by pgps-predict),
prints a table and writes JSON (``--json``, default ``PRED_DIR/summary.json``).

Every label in LABEL_DIR needs its prediction and every prediction its label: a mean over
the cases that happen to be there is not the score of the set. A mismatch is one line
naming the cases, exit 1 (as pgps-predict's "some case has no output"; 2 stays for
unusable input), and nothing is written. ``--allow-missing`` scores the matched cases
and records the others in the JSON (``missing``: labels without prediction,
``unlabelled``: predictions without label). The JSON is written atomically and never
replaces a file that is not an earlier pgps-evaluate result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pgps_data.errors import PGPSInputError
from pgps_data.labels import Labels
from pgps_data.raw.cases import AFFINE_TOLERANCE
from pgps_data.raw.readers import file_ending, read_volume

PROG = "pgps-evaluate"
TOOL = "pgps-evaluate"  # marks its JSON results: only those are ever replaced
SHOWN = 5  # cases named in a one-line message before "and N more"
LabelsLike = Labels | Mapping[str, int | list[int]]  # a mapping is read as Labels(mapping)


class MissingCasesError(PGPSInputError):
    """Labels without a prediction or predictions without a label (exit 1, not 2)."""

    def __init__(self, message: str, missing: list[str], unlabelled: list[str]):
        super().__init__(message)
        self.missing, self.unlabelled = missing, unlabelled


def dice_scores(
    pred: np.ndarray, ref: np.ndarray, labels: LabelsLike, ignore_label: int | None = None
) -> dict[str, float | None]:
    """Dice per scored label of two (Z, Y, X) label maps: {name: Dice or None}.

    ``labels`` is a :class:`~pgps_data.labels.Labels` or a mapping of names to a value or
    a list of values (a region: Dice of the union); ``ignore_label`` (for a mapping)
    defaults to its ``"ignore"`` label.
    """
    import torch
    from monai.metrics import compute_dice

    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    labels = as_labels(labels, ignore_label)
    scored = labels.scored()
    if not scored:
        return {}
    ignore = labels.ignore_label
    keep = None if ignore is None else ref != ignore
    p_masks, r_masks = [], []
    for values in scored.values():
        p, r = np.isin(pred, values), np.isin(ref, values)
        if keep is not None:
            p &= keep
            r &= keep
        p_masks.append(p)
        r_masks.append(r)
    y_pred = torch.from_numpy(np.stack(p_masks)[None])
    y = torch.from_numpy(np.stack(r_masks)[None])
    # ignore_empty=False: empty reference → 1 if the prediction is empty too, else 0
    scores = compute_dice(y_pred, y, include_background=True, ignore_empty=False)[0]
    out: dict[str, float | None] = {}
    for i, name in enumerate(scored):
        both_empty = not p_masks[i].any() and not r_masks[i].any()
        out[name] = None if both_empty else float(scores[i])
    return out


def as_labels(labels: LabelsLike, ignore_label: int | None = None) -> Labels:
    """``labels`` as :class:`~pgps_data.labels.Labels` (a mapping is checked like a
    dataset.json's labels)."""
    if isinstance(labels, Labels):
        return labels
    return Labels(labels, ignore_label=ignore_label)


def evaluate_folder(
    pred_dir: str | Path,
    label_dir: str | Path,
    labels: LabelsLike,
    ignore_label: int | None = None,
    file_ending: str | None = None,
    *,
    allow_missing: bool = False,
) -> dict[str, Any]:
    """Dice of every prediction in ``pred_dir`` against ``label_dir/<same id><ending>``.

    Returns ``{"per_case": {id: {label: dice}}, "mean": {label: mean or None},
    "foreground_mean": float or None, "missing": [ids], "unlabelled": [ids]}``. A label
    without a prediction (``missing``) or a prediction without a label (``unlabelled``)
    raises :class:`MissingCasesError` naming them, before any file is read, unless
    ``allow_missing``: then only the matched cases are scored and the lists say which
    were not. ``file_ending`` restricts both folders to one ending; by default any
    readable ending, matched by case id. A prediction whose shape or affine differs from
    its reference raises PGPSInputError naming both files.
    """
    labels = as_labels(labels, ignore_label)
    preds = _images(Path(pred_dir), file_ending)
    refs = _images(Path(label_dir), file_ending)
    if not preds:
        raise PGPSInputError(f"{pred_dir}: no prediction files found")
    missing = sorted(set(refs) - set(preds))
    unlabelled = sorted(set(preds) - set(refs))
    if (missing or unlabelled) and not allow_missing:
        todo = "predict the missing cases" if missing else "check LABEL_DIR"
        raise MissingCasesError(f"{mismatch_line(pred_dir, label_dir, missing, unlabelled, refs)} "
                                f"({todo}, or give --allow-missing to score the matched cases "
                                "only)", missing, unlabelled)
    if len(unlabelled) == len(preds):
        raise PGPSInputError(f"{pred_dir}: no prediction has a reference label in {label_dir} "
                             "(is it the right LABEL_DIR?)")
    per_case: dict[str, dict[str, float | None]] = {}
    for case_id, pred_path in preds.items():
        ref_path = refs.get(case_id)
        if ref_path is None:
            continue  # unlabelled, allowed: recorded below
        pred, ref = read_volume(pred_path, channels=1), read_volume(ref_path, channels=1)
        if pred.data.shape != ref.data.shape:
            raise PGPSInputError(f"{pred_path}: shape {pred.data.shape} differs from reference "
                                 f"{ref_path} {ref.data.shape}; predict in the label's geometry")
        if not np.allclose(pred.affine, ref.affine, atol=AFFINE_TOLERANCE):
            raise PGPSInputError(f"{pred_path}: affine differs from reference {ref_path}; "
                                 "predict in the label's geometry")
        per_case[case_id] = dice_scores(_ints(pred.data, pred_path), _ints(ref.data, ref_path),
                                        labels)
    return {**summarise(per_case), "missing": missing, "unlabelled": unlabelled}


def summarise(per_case: Mapping[str, Mapping[str, float | None]]) -> dict[str, Any]:
    """Means over cases (skipping None) and the foreground mean of per-case Dice scores."""
    names: list[str] = []
    for scores in per_case.values():
        names += [n for n in scores if n not in names]
    mean: dict[str, float | None] = {}
    for name in names:
        vals = [s[name] for s in per_case.values() if s.get(name) is not None]
        mean[name] = float(np.mean(vals)) if vals else None
    present = [v for v in mean.values() if v is not None]
    return {
        "per_case": {k: dict(v) for k, v in per_case.items()},
        "mean": mean,
        "foreground_mean": float(np.mean(present)) if present else None,
    }


def print_table(results: Mapping[str, Any], console: Any = None, title: str = "Dice") -> None:
    """Print per-case Dice per label with a mean row (rich); '-' marks None."""
    from rich.console import Console
    from rich.table import Table

    names = list(results["mean"])
    table = Table(title=title)
    table.add_column("case")
    for name in names:
        table.add_column(name, justify="right")
    for case_id, scores in results["per_case"].items():
        table.add_row(case_id, *(_fmt(scores.get(n)) for n in names))
    table.add_section()
    table.add_row("mean", *(_fmt(results["mean"][n]) for n in names), style="bold")
    (console or Console()).print(table)
    fg = results.get("foreground_mean")
    (console or Console()).print(f"foreground mean Dice: {_fmt(fg)}")


# ----------------------------------------------------------------------------- internals


def mismatch_line(pred_dir: object, label_dir: object, missing: list[str], unlabelled: list[str],
              refs: Mapping[str, Path] | None = None) -> str:
    """One line naming the first few cases of each mismatch and their count."""
    parts = []
    if missing:
        total = f" of {len(refs)}" if refs is not None else ""
        parts.append(f"{pred_dir}: no prediction for {len(missing)}{total} labelled case(s) in "
                     f"{label_dir}: {_some(missing)}")
    if unlabelled:
        where = "" if missing else f"{pred_dir}: "
        parts.append(f"{where}{len(unlabelled)} prediction(s) have no label in {label_dir}: "
                     f"{_some(unlabelled)}")
    return "; ".join(parts)


def _some(ids: list[str]) -> str:
    shown = ", ".join(ids[:SHOWN])
    return shown + (f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else "")


def _images(folder: Path, ending: str | None) -> dict[str, Path]:
    if not folder.is_dir():
        raise PGPSInputError(f"{folder}: not a directory")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        end = file_ending(path)
        if end is None or path.name.startswith(".") or (ending and end != ending):
            continue
        case_id = path.name[: -len(end)]
        if case_id in found:
            raise PGPSInputError(f"{path}: case {case_id!r} also in {found[case_id].name} "
                                 "(give --file-ending)")
        found[case_id] = path
    return found


def _ints(data: np.ndarray, path: Path) -> np.ndarray:
    if np.issubdtype(data.dtype, np.floating) and np.any(data != np.round(data)):
        raise PGPSInputError(f"{path}: holds non-integer values; a label map is required")
    return data.astype(np.int64, copy=False)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def json_ready(obj: Any) -> Any:
    """NaN → None all the way down (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj
