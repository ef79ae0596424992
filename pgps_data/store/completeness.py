"""Which cases of a store are complete: listed through the file system, arrays checked.

The ``complete`` flag is the one attribute the writer (:mod:`pgps_data.store.write`) sets
last, on each case and on the store root; :func:`is_complete` is the only reader of it.
A case is complete when its flag is set *and* every array it must hold exists (image;
label for a training case; each name in ``index_arrays``). A case marked complete with an
array gone (deleted by hand, a half-restored backup) is reported apart, so that
:class:`pgps_data.store.store.Store` neither lists it nor raises ``KeyError`` on it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import zarr

from pgps_data.errors import PGPSInputError

__all__ = ["CASE_INDEX", "COMPLETE", "case_index", "indexed_cases", "is_complete",
           "missing_arrays", "remote_cases", "scan_cases"]

COMPLETE = "complete"  # the attribute written last, on a case and on the store root
#: Root attribute written with ``complete``: {group: {case id: its attributes}} of the
#: complete cases, so a store opens where it cannot be listed (plain HTTP, object storage).
CASE_INDEX = "case_index"


def is_complete(attrs: Mapping[str, Any]) -> bool:
    """Whether ``attrs`` (a case's or the root's) carry the ``complete`` flag.

    Only JSON ``true`` counts: the writer never writes anything else, so a ``1`` or
    ``"true"`` is an edit by hand and the case (or store) is treated as unfinished.
    """
    return attrs.get(COMPLETE) is True


def scan_cases(
    path: Path | None, root: zarr.Group | None, group: str, *, labelled: bool
) -> tuple[dict[str, dict], dict[str, tuple[str, str]]]:
    """The complete cases of ``group`` ({id: attrs}) and those marked complete with an
    array missing ({id: (group, "its array 'label' is missing")}).

    Complete = :func:`is_complete` and every array present (image; label for training
    cases; each of ``index_arrays``). Local stores are listed through the file system
    (one small JSON read and a few stats per case); anything unreadable counts as
    incomplete, never as an error.
    """
    done: dict[str, dict] = {}
    broken: dict[str, tuple[str, str]] = {}
    folder = None if path is None else path / group
    if folder is not None and folder.is_dir():
        for name in os.listdir(folder):
            attrs = _case_attrs(folder / name)
            if attrs is not None and is_complete(attrs):
                gone = _gone(folder / name, attrs, labelled)
                _sort(name, attrs, gone, group, done, broken)
        return done, broken
    if root is None:
        return done, broken
    try:
        sub = root[group]
    except KeyError:
        return done, broken
    for name, child in sub.groups():
        attrs = dict(child.attrs)
        if is_complete(attrs):
            present = set(child.array_keys())
            gone = [a for a in _arrays(attrs, labelled) if a not in present]
            _sort(name, attrs, gone, group, done, broken)
    return done, broken


def case_index(path: Path, groups: dict[str, bool]) -> dict[str, dict[str, dict]]:
    """The case index of the local store at ``path`` ({group: {id: attrs}}) for the
    ``groups`` given as {name: labelled}: its complete cases, listed as a reader lists them."""
    return {g: scan_cases(path, None, g, labelled=labelled)[0] for g, labelled in groups.items()}


def indexed_cases(attrs: Mapping[str, Any], group: str) -> dict[str, dict] | None:
    """The complete cases of ``group`` from a root's case index; None if it has none (a
    store written before the index, or one whose conversion did not finish)."""
    index = attrs.get(CASE_INDEX)
    if not isinstance(index, dict):
        return None
    cases = index.get(group, {})
    return {str(k): dict(v) for k, v in cases.items() if isinstance(v, dict)}


def remote_cases(url: str, root: zarr.Group, attrs: Mapping[str, Any], train_group: str,
                 test_group: str) -> tuple[dict[str, dict], dict[str, dict]]:
    """A remote store's (training, test) complete cases: from its case index, else by
    listing (object storage can list; plain HTTP cannot: then one line). Arrays are not
    checked: the index lists what the writer completed."""
    train = indexed_cases(attrs, train_group) if is_complete(attrs) else None
    if train is not None:
        return train, indexed_cases(attrs, test_group) or {}
    try:
        train, _ = scan_cases(None, root, train_group, labelled=True)
        test, _ = scan_cases(None, root, test_group, labelled=False)
    except PGPSInputError:
        raise
    except Exception as exc:  # noqa: BLE001  (a store that cannot be listed)
        raise PGPSInputError(
            f"the store has no case index and cannot be listed ({type(exc).__name__}); "
            "rerun pgps-convert on the local copy (it writes the index) and pgps-upload "
            "it again", path=url) from None
    return train, test


def missing_arrays(case_dir: Path, labelled: bool) -> list[str] | None:
    """The arrays a case folder marked complete lacks ([] = whole), or None if the case
    is not marked complete. For a writer deciding whether a rerun may skip the case."""
    attrs = _case_attrs(Path(case_dir))
    if attrs is None or not is_complete(attrs):
        return None
    return _gone(Path(case_dir), attrs, labelled)


def _case_attrs(case_dir: Path) -> dict | None:
    """A case folder's attributes from its ``zarr.json``; None if it cannot be read."""
    try:
        with open(case_dir / "zarr.json", "rb") as fh:
            attrs = json.load(fh).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return None
    return attrs if isinstance(attrs, dict) else None


def _gone(case_dir: Path, attrs: dict, labelled: bool) -> list[str]:
    return [a for a in _arrays(attrs, labelled) if not (case_dir / a / "zarr.json").is_file()]


def _arrays(attrs: dict, labelled: bool) -> list[str]:
    """The arrays a complete case must hold (``labelled``: a training case)."""
    return ["image", *(["label"] if labelled else []), *attrs.get("index_arrays", [])]


def _sort(name, attrs, gone, group, done, broken) -> None:  # noqa: ANN001
    """File a case marked complete: listed if no array is ``gone``, else broken."""
    if gone:
        broken[name] = (group, f"its array {gone[0]!r} is missing")
    else:
        done[name] = attrs
