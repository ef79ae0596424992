"""The one rule for case ids: a case id becomes a folder name inside the store.

Used by the dataset readers (a case with an unsafe id is refused before any path is built)
and by the store writer (which refuses it again before it creates or deletes a folder).
"""

from __future__ import annotations

import re

__all__ = ["MAX_CASE_ID", "SAFE_CASE_ID", "check_case_id"]

SAFE_CASE_ID = re.compile(r"[A-Za-z0-9._-]+")
MAX_CASE_ID = 255  # one folder name on every common file system
# names with a meaning of their own inside a zarr group folder (v3 and v2 metadata)
_ZARR_RESERVED = {"zarr.json", ".zgroup", ".zattrs", ".zarray", ".zmetadata"}


def check_case_id(case_id: str) -> str | None:
    """The problem with ``case_id`` as a store folder name, as one line; None when safe.

    Safe: a str of letters, digits, ``.``, ``_`` and ``-`` (at most 255), not ``.`` or
    ``..``, not a zarr metadata name (any letter case: macOS folds it), not starting with
    ``__`` (reserved by zarr v3).
    """
    if not isinstance(case_id, str) or not case_id:
        return f"case id {case_id!r} is empty or not text"
    if case_id in (".", ".."):
        return f"case id {case_id!r} names a folder itself, not a case"
    if not SAFE_CASE_ID.fullmatch(case_id):
        return (
            f"case id {case_id!r} may only hold letters, digits, '.', '_' and '-' "
            "(it becomes a folder name)"
        )
    if len(case_id) > MAX_CASE_ID:
        return f"case id {case_id[:20]!r}... is {len(case_id)} characters, at most {MAX_CASE_ID}"
    if case_id.casefold() in _ZARR_RESERVED or case_id.startswith("__"):
        return f"case id {case_id!r} is a name zarr reserves for its own metadata"
    return None
