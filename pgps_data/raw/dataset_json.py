"""Reading ``dataset.json`` strictly: what a raw dataset declares about itself.

:mod:`json` silently keeps the last of two equal keys, so ``{"1": "liver", "1": "tumour"}``
would lose a label without a word. :func:`read_dataset_json` keeps every object's repeated
keys (:func:`duplicates`), and the label parsers refuse, in one line naming the value and
both names, a label declared twice: nnU-Net itself would be confused by two names for one
value. Region labels (lists of values) may overlap, that is their point; plain integer
labels must be unique.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pgps_data.errors import PGPSInputError, read_json


class _JSONObject(dict):
    """A JSON object that remembers keys given twice (json keeps only the last value)."""

    duplicates: list[tuple[str, Any, Any]]  # (key, first value, later value)

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> _JSONObject:
        obj = cls()
        obj.duplicates = []
        for key, value in pairs:
            if key in obj:
                obj.duplicates.append((key, obj[key], value))
            obj[key] = value
        return obj


def read_dataset_json(meta_path: Path) -> dict[str, Any]:
    """The JSON object in ``meta_path``; missing, invalid or not an object is one line."""
    read_json(meta_path, "an MSD or nnU-Net raw dataset needs one")  # its one-line errors
    meta = json.loads(meta_path.read_text(encoding="utf-8"),
                      object_pairs_hook=_JSONObject.from_pairs)
    if not isinstance(meta, dict):
        raise PGPSInputError(f"{meta_path}: must hold a JSON object")
    return meta


def duplicates(obj: Any) -> list[tuple[str, Any, Any]]:
    """Keys given twice in the JSON object ``obj``: (key, first value, later value)."""
    return getattr(obj, "duplicates", [])


def msd_labels(raw: Any, meta_path: Path) -> dict[str, int | list[int]]:
    """MSD ``labels`` {"0": "background", "1": "spleen"} as {name: value}."""
    if not isinstance(raw, dict) or not raw:
        raise PGPSInputError(f"{meta_path}: 'labels' must map values to names")
    for key, first, later in duplicates(raw):
        raise PGPSInputError(
            f"{meta_path}: label value {key} is declared twice ({first!r} and {later!r}); "
            "give each label its own value"
        )
    labels: dict[str, int | list[int]] = {}
    for value, name in raw.items():
        try:
            number = int(value)
        except ValueError as exc:
            raise PGPSInputError(f"{meta_path}: label value {value!r} is not an integer") from exc
        if str(name) in labels:
            raise PGPSInputError(
                f"{meta_path}: label name {name!r} is given to values {labels[str(name)]} and "
                f"{number}; give each value its own name"
            )
        labels[str(name)] = number
    _unique_values(labels, meta_path)
    return labels


def nnunet_labels(raw: Any, meta_path: Path) -> dict[str, int | list[int]]:
    """nnU-Net v2 ``labels`` {name: value or [values] (a region)}, checked."""
    if not isinstance(raw, dict) or not raw:
        raise PGPSInputError(f"{meta_path}: 'labels' must map names to values")
    for name, first, later in duplicates(raw):
        raise PGPSInputError(
            f"{meta_path}: label {name!r} is declared twice ({first!r} and {later!r}); "
            "give each label one entry"
        )
    labels: dict[str, int | list[int]] = {}
    for name, value in raw.items():
        values = value if isinstance(value, list | tuple) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise PGPSInputError(
                f"{meta_path}: label {name!r} must be an integer or a list of them"
            )
        labels[str(name)] = list(values) if isinstance(value, list | tuple) else int(value)
    _unique_values(labels, meta_path)
    return labels


def channel_list(raw: Any, meta_path: Path, key: str) -> list[str]:
    """``modality`` / ``channel_names`` {"0": "CT", ...} as a list in channel order."""
    if not isinstance(raw, dict) or not raw:
        raise PGPSInputError(f"{meta_path}: '{key}' must map channel index to name")
    try:
        items = sorted((int(k), str(v)) for k, v in raw.items())
    except ValueError as exc:
        raise PGPSInputError(f"{meta_path}: '{key}' keys must be channel indices") from exc
    if [k for k, _ in items] != list(range(len(items))):
        raise PGPSInputError(f"{meta_path}: '{key}' indices must be 0..{len(items) - 1}")
    return [v for _, v in items]


def _unique_values(labels: dict[str, int | list[int]], meta_path: Path) -> None:
    """Refuse two label names with one plain integer value (region lists may overlap)."""
    seen: dict[int, str] = {}
    for name, value in labels.items():
        if isinstance(value, list):
            continue
        if value in seen:
            raise PGPSInputError(
                f"{meta_path}: label value {value} is declared twice ({seen[value]!r} and "
                f"{name!r}); give each label its own value (overlapping labels are region lists)"
            )
        seen[value] = name
