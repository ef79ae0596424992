"""Which cases of a store are complete: listed through the file system, arrays checked.

A case is complete when its ``complete`` attribute (written last by
:mod:`pgps_data.store.write`) is True *and* every array it must hold exists (image; label
for a training case; each name in ``index_arrays``). A case marked complete with an array
gone (deleted by hand, a half-restored backup) is reported apart, so that
:class:`pgps_data.store.store.Store` neither lists it nor raises ``KeyError`` on it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import zarr

__all__ = ["missing_arrays", "scan_cases"]


def scan_cases(
    path: Path, root: zarr.Group, group: str, *, labelled: bool
) -> tuple[dict[str, dict], dict[str, tuple[str, str]]]:
    """The complete cases of ``group`` ({id: attrs}) and those marked complete with an
    array missing ({id: (group, "its array 'label' is missing")}).

    Complete = ``complete`` attribute True and every array present (image; label for
    training cases; each of ``index_arrays``). Local stores are listed through the file
    system (one small JSON read and a few stats per case); anything unreadable counts as
    incomplete, never as an error.
    """
    done: dict[str, dict] = {}
    broken: dict[str, tuple[str, str]] = {}
    folder = path / group
    if folder.is_dir():
        for name in os.listdir(folder):
            try:
                with open(folder / name / "zarr.json", "rb") as fh:
                    attrs = json.load(fh).get("attributes", {})
            except (OSError, ValueError, AttributeError):
                continue
            if attrs.get("complete") is True:
                gone = _gone(folder / name, attrs, labelled)
                _sort(name, attrs, gone, group, done, broken)
        return done, broken
    try:
        sub = root[group]
    except KeyError:
        return done, broken
    for name, child in sub.groups():
        attrs = dict(child.attrs)
        if attrs.get("complete") is True:
            present = set(child.array_keys())
            gone = [a for a in _arrays(attrs, labelled) if a not in present]
            _sort(name, attrs, gone, group, done, broken)
    return done, broken


def missing_arrays(case_dir: Path, labelled: bool) -> list[str] | None:
    """The arrays a case folder marked complete lacks ([] = whole), or None if the case
    is not marked complete. For a writer deciding whether a rerun may skip the case."""
    try:
        with open(Path(case_dir) / "zarr.json", "rb") as fh:
            attrs = json.load(fh).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return None
    return _gone(Path(case_dir), attrs, labelled) if attrs.get("complete") is True else None


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
