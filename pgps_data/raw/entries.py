"""Safe names and safe paths for what a raw dataset lists: case ids and file entries.

Two rules keep a conversion from touching anything it did not write:

* :func:`check_case_id` — a case id becomes a folder name in the store
  (``cases/<id>``), so it must be one plain path component: ``[A-Za-z0-9._-]+``, never
  ``.`` or ``..``, no name zarr reserves. Ids come from dataset.json keys and from file
  names, so every id is checked before any path is built from it. The rule lives in
  :mod:`pgps_data.store.case_ids` (the store writer checks it again before it creates or
  deletes a folder); this module re-exports it under the name the dataset readers use.
* :func:`resolve_entry` — a file entry of dataset.json (or a name found in imagesTr) is
  refused when its text is absolute or contains ``..``. Symlinks found inside the dataset
  folder are followed wherever they point (nnU-Net raw datasets are commonly built from
  symlinked files or folders); pgps only reads them. A dangling symlink is one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pgps_data.store.case_ids import check_case_id  # noqa: F401  (re-exported: the ingest side's name)


def show(text: Any) -> str:
    """``text`` as it can appear in a one-line message (odd characters escaped)."""
    text = str(text)
    return text if text.isprintable() else ascii(text)


def resolve_entry(root: Path, entry: Any, where: str, problems: list[str]) -> str | None:
    """The path of ``entry`` under ``root`` (not resolved), or None with one problem line.

    Refused without opening anything: a non-string or empty entry, an absolute entry, an
    entry with a ``..`` component. Skipped: a missing file, a dangling symlink (on the
    file or on a folder above it), something that is not a regular file. A symlink may
    point anywhere readable; :func:`through_symlink` tells which paths do.
    """
    if not isinstance(entry, str) or not entry:
        problems.append(f"{where}: {entry!r} is not a file path; case skipped")
        return None
    if os.path.isabs(entry) or ".." in Path(entry).parts:
        problems.append(f"{where}: {entry!r} points outside the dataset folder; case refused")
        return None
    base = root.resolve()
    path = base / entry
    if not path.exists():
        link = _dangling(base, path)
        if link is not None:
            target = os.readlink(link)
            problems.append(
                f"{where}: {entry!r} goes through the dangling symlink {show(link)} -> "
                f"{show(target)} (its target does not exist); fix the link; case skipped"
            )
        else:
            problems.append(f"{where}: {entry!r} is missing; case skipped")
        return None
    if not path.is_file():
        problems.append(f"{where}: {entry!r} is not a regular file; case skipped")
        return None
    return str(path)


def dangling_folder(folder: Path) -> str | None:
    """One line when ``folder`` is a symlink whose target does not exist, else None."""
    if folder.is_symlink() and not folder.exists():
        return (
            f"{show(folder)}: dangling symlink -> {show(os.readlink(folder))} "
            "(its target does not exist); fix the link"
        )
    return None


def through_symlink(root: Path, path: str) -> bool:
    """Whether ``path`` (under ``root``) is a symlink or lies in a symlinked folder."""
    base = root.resolve()
    current = Path(path)
    while current != base and base in current.parents:
        if current.is_symlink():
            return True
        current = current.parent
    return False


def _dangling(base: Path, path: Path) -> Path | None:
    """The first component of ``path`` below ``base`` that is a symlink to nothing."""
    current = base
    for part in path.relative_to(base).parts:
        current = current / part
        if current.is_symlink() and not current.exists():
            return current
        if not current.exists():
            return None
    return None
