"""Writing a pgps store: the root group, then one case at a time, crash-safe.

Each case is written by exactly one task into its own folder (``cases/<id>`` or
``test/<id>``), so no two writers ever touch one shard. Its arrays are written first and
its ``complete`` attribute last (zarr writes ``zarr.json`` atomically), so a case killed
mid-write is simply not listed, and a rerun deletes and rewrites only such cases.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pgps_data.errors import PGPSInputError
from pgps_data.layout import write_array
from pgps_data.store import FORMAT_VERSION, TEST_GROUP, TRAIN_GROUP


def prepare_store(path: Path, attrs: dict[str, Any], *, overwrite: bool) -> bool:
    """Create the root group, or check that an existing store came from the same inputs.

    Returns True when an existing store is continued (complete cases will be skipped).
    A store made from different inputs is refused unless ``overwrite``; a folder that is
    not a pgps store is never deleted.
    """
    if path.exists():
        existing = _read_root_attrs(path)
        if existing is None:
            if path.is_dir() and not any(path.iterdir()):
                shutil.rmtree(path)
            else:
                raise PGPSInputError(
                    f"{path}: exists and is not a pgps store; choose another output path"
                )
        elif overwrite:
            shutil.rmtree(path)
        elif existing.get("inputs_fingerprint") != attrs["inputs_fingerprint"]:
            raise PGPSInputError(
                f"{path}: was converted from different inputs or options; "
                "rerun with --overwrite to start over, or choose another output path"
            )
        else:
            return True
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.require_group(TRAIN_GROUP)
    root.require_group(TEST_GROUP)
    root.attrs.update(
        {**attrs, "format": "pgps", "format_version": FORMAT_VERSION, "complete": False}
    )
    return False


def existing_attrs(path: Path) -> dict[str, Any] | None:
    """The root attributes of the store at ``path``, or None if there is none."""
    return _read_root_attrs(path)


def case_is_complete(path: Path, case_id: str, is_test: bool) -> bool:
    """Whether ``case_id`` is already fully written (so a rerun skips it)."""
    meta = path / (TEST_GROUP if is_test else TRAIN_GROUP) / case_id / "zarr.json"
    try:
        doc = json.loads(meta.read_bytes())
    except (OSError, ValueError):
        return False
    return doc.get("attributes", {}).get("complete") is True


def write_case(
    path: Path,
    case_id: str,
    *,
    image: np.ndarray,
    label: np.ndarray | None,
    indices: dict[int, np.ndarray] | None,
    annotated: np.ndarray | None,
    attrs: dict[str, Any],
    codec: str = "default",
) -> None:
    """Write one case; ``complete`` is set last, after every array is on disk."""
    is_test = label is None
    folder = path / (TEST_GROUP if is_test else TRAIN_GROUP) / case_id
    if folder.exists():  # an earlier, interrupted attempt: start this case over
        shutil.rmtree(folder)
    group = zarr.open_group(str(folder), mode="w", zarr_format=3)
    write_array(group, "image", image, kind="image", codec=codec)
    index_arrays: list[str] = []
    if label is not None:
        write_array(group, "label", label, kind="label", codec=codec)
        for value, coords in (indices or {}).items():
            write_array(group, f"fg_{value}", coords, kind="index", codec=codec)
            index_arrays.append(f"fg_{value}")
        if annotated is not None:
            write_array(group, "annotated", annotated, kind="index", codec=codec)
            index_arrays.append("annotated")
    group.attrs.update({**attrs, "index_arrays": index_arrays, "is_test": is_test})
    group.attrs["complete"] = True


def finish_store(path: Path, summary: dict[str, Any]) -> None:
    """Record dataset-level results (e.g. per-class foreground fraction) in the root."""
    root = zarr.open_group(str(path), mode="r+")
    root.attrs.update({**summary, "complete": True})


def _read_root_attrs(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((path / "zarr.json").read_bytes())
    except (OSError, ValueError):
        return None
    attrs = doc.get("attributes", {})
    return attrs if attrs.get("format") == "pgps" else None
