"""Reading ``dataset.json`` strictly: what a raw dataset declares about itself.

:mod:`json` silently keeps the last of two equal keys, so ``{"1": "liver", "1": "tumour"}``
would lose a label without a word. :func:`read_dataset_json` keeps every object's repeated
keys (:func:`duplicates`), and the label readers (:func:`msd_labels`,
:func:`nnunet_labels`, used by :meth:`pgps_data.labels.Labels.from_dataset_json`) refuse,
in one line naming the value and both names, a label declared twice: nnU-Net itself would
be confused by two names for one value. The channel list is read here too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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


def read_dataset_json(meta_path: Path,
                      hint: str = "an MSD or nnU-Net raw dataset needs one") -> dict[str, Any]:
    """The JSON object in ``meta_path``; missing, invalid or not an object is one line
    (``hint`` says, for a missing file, what it should have been)."""
    read_json(meta_path, hint)  # its one-line errors
    meta = json.loads(meta_path.read_text(encoding="utf-8"),
                      object_pairs_hook=_JSONObject.from_pairs)
    if not isinstance(meta, dict):
        raise PGPSInputError(f"{meta_path}: must hold a JSON object")
    return meta


def duplicates(obj: Any) -> list[tuple[str, Any, Any]]:
    """Keys given twice in the JSON object ``obj``: (key, first value, later value)."""
    return getattr(obj, "duplicates", [])


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


def msd_labels(raw: Any, where: str | Path) -> dict[str, int]:
    """MSD ``labels`` {"0": "background", "1": "spleen"} as {name: value}; a value or name
    given twice is refused (the values are checked by :class:`~pgps_data.labels.Labels`)."""
    if not isinstance(raw, Mapping) or not raw:
        raise PGPSInputError(f"{where}: 'labels' must map values to names")
    for key, first, later in duplicates(raw):
        raise PGPSInputError(f"{where}: label value {key} is declared twice ({first!r} and "
                             f"{later!r}); give each label its own value")
    labels: dict[str, int] = {}
    for value, name in raw.items():
        try:
            number = int(value)
        except ValueError:
            raise PGPSInputError(f"{where}: MSD label key {value!r} is not an integer "
                                 "(MSD labels map values to names)") from None
        if str(name) in labels:
            raise PGPSInputError(f"{where}: label name {name!r} is given to values "
                                 f"{labels[str(name)]} and {number}; give each value its own name")
        labels[str(name)] = number
    return labels


def nnunet_labels(raw: Any, where: str | Path) -> Mapping[str, Any]:
    """nnU-Net v2 ``labels`` {name: value or [values]}; a name given twice is refused."""
    if not isinstance(raw, Mapping) or not raw:
        raise PGPSInputError(f"{where}: 'labels' must map names to values")
    for name, first, later in duplicates(raw):
        raise PGPSInputError(f"{where}: label {name!r} is declared twice ({first!r} and "
                             f"{later!r}); give each label one entry")
    return raw
