"""Writing a pgps store: the root group, then one case at a time, crash-safe.

Each case is written by exactly one task into its own folder (``cases/<id>`` or
``test/<id>``), so no two writers ever touch one shard. Its arrays are written first and
its ``complete`` attribute last (zarr writes ``zarr.json`` atomically), so a case killed
mid-write is simply not listed, and a rerun deletes and rewrites only such cases.

Safety (the caller holds the store's lock, :mod:`pgps_data.store.lock`):

- :func:`check_target` decides, writing nothing, whether an output path is refused,
  continued (same inputs) or gets a new root (:func:`create_root`); the converter asks it
  before taking the lock and again under it, and nowhere else.
- The root's ``zarr.json`` is written in one atomic step with all its attributes (temp
  file + ``os.replace``), so an interrupted first write leaves either nothing or a root
  that a rerun continues, never a group without our attributes.
- Nothing is deleted except through :func:`safe_remove`: a case folder directly inside
  ``cases/`` or ``test/``, or one of pgps's own entries of a root it is overwriting.
  Case ids are checked (:func:`pgps_data.store.case_ids.check_case_id`) before any path
  is built from them.
- The store records an identity: a ``creation_id`` made when its root is created, and
  each case's ``checksum`` of its arrays as written (:func:`content_checksum`).
- A full disk (or any other write failure) is one line naming the store, and leaves it
  resumable.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pgps_data.errors import PGPSInputError
from pgps_data.store.atomic_write import write_atomic
from pgps_data.store.case_ids import check_case_id as case_id_problem
from pgps_data.store.chunking import LAYOUTS, write_array
from pgps_data.store.completeness import CASE_INDEX, COMPLETE, case_index, missing_arrays
from pgps_data.store.lock import LOCK_NAME, case_lock, is_case_lock
from pgps_data.store.store import FORMAT_VERSION, TEST_GROUP, TRAIN_GROUP

__all__ = [
    "RESUME", "case_is_complete", "check_target", "content_checksum",
    "create_root", "ensure_case_groups", "finish_store", "root_state", "safe_remove",
    "write_case",
]

#: How every message about a stopped conversion ends (Ctrl-C, a full disk, a dead worker).
RESUME = "rerun the same command to continue (complete cases are kept)"

_PARTIAL = re.compile(r"zarr\.[0-9a-f]{32}\.partial")  # zarr's and our temp zarr.json
_OWN_ROOT_ENTRIES = ("zarr.json", TRAIN_GROUP, TEST_GROUP)


# ------------------------------------------------------------------------------ the root


def root_state(path: Path) -> str:
    """What is at ``path``: "missing", "empty" (at most our lock and temp files), "store"
    (a pgps root), "bare" (an empty zarr group without our attributes, with at most empty
    ``cases``/``test`` groups: what an interrupted older pgps left) or "foreign"."""
    if not path.exists():
        return "missing"
    if not path.is_dir():
        return "foreign"
    names = {p.name for p in path.iterdir()} - {LOCK_NAME}
    names = {n for n in names if not (_PARTIAL.fullmatch(n) or is_case_lock(n))}
    if not names:
        return "empty"
    doc = _read_json(path / "zarr.json")
    if _pgps_attrs(doc) is not None:
        return "store"
    if names - set(_OWN_ROOT_ENTRIES) or not _is_empty_group(path, doc, root=True):
        return "foreign"
    for sub in (TRAIN_GROUP, TEST_GROUP):
        if sub in names and not _is_empty_group(path / sub, _read_json(path / sub / "zarr.json")):
            return "foreign"
    return "bare"


def check_target(path: Path, fingerprint: str, *, overwrite: bool) -> dict[str, Any] | None:
    """Refuse an output path that is not ours to write; returns the attributes of the
    store to continue, or None when a new root is to be written (:func:`create_root`).

    Refused: anything that is not pgps's ("foreign", ``overwrite`` or not: a folder pgps
    did not write is never deleted), a bare root without ``overwrite``, and a store made
    from other inputs (``fingerprint``) without ``overwrite``. Continued: a store made
    from the same inputs, without ``overwrite`` (its complete cases will be skipped).
    Writes nothing, so it may run before the lock is taken, and again under it.
    """
    state = root_state(path)
    if state == "foreign":
        raise PGPSInputError(f"{path}: exists and is not a pgps store; choose another output path")
    if state == "bare" and not overwrite:
        raise PGPSInputError(
            f"{path}: holds an unfinished store root (an earlier conversion stopped before "
            "writing its attributes); rerun with --overwrite to clear it"
        )
    previous = _existing_attrs(path) if state == "store" and not overwrite else None
    if previous is not None and previous.get("inputs_fingerprint") != fingerprint:
        raise PGPSInputError(
            f"{path}: was converted from different inputs or options; rerun with "
            "--overwrite to start over, or choose another output path"
        )
    return previous


def create_root(path: Path, attrs: dict[str, Any]) -> None:
    """Write a new store root at ``path`` with ``attrs``, clearing pgps's own old root.

    For a target :func:`check_target` returned None for, with the store's lock held.
    The old root's ``zarr.json`` is replaced, never deleted: a crash while clearing leaves
    the old (partly emptied) store, which a rerun continues or overwrites again. Only
    pgps's own entries go, through :func:`safe_remove` (the lock file and anything a user
    put beside them stay).
    """
    for entry in sorted(path.iterdir()) if path.is_dir() else []:
        if entry.name in (TRAIN_GROUP, TEST_GROUP) or _PARTIAL.fullmatch(entry.name):
            safe_remove(entry, path)
    root = {
        **attrs,
        "format": "pgps",
        "format_version": FORMAT_VERSION,
        "creation_id": uuid.uuid4().hex,
        COMPLETE: False,
    }
    _write_group(path, root, what="the store root")
    ensure_case_groups(path)


def ensure_case_groups(path: Path) -> None:
    """Create the ``cases`` and ``test`` groups of the root at ``path`` where missing."""
    for sub in (TRAIN_GROUP, TEST_GROUP):
        if not (path / sub / "zarr.json").is_file():
            _write_group(path / sub, {}, what="the store root", store=path)


def _existing_attrs(path: Path) -> dict[str, Any] | None:
    """The root attributes of the store at ``path``, or None if there is none."""
    return _pgps_attrs(_read_json(path / "zarr.json"))


def _pgps_attrs(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """The attributes of a root ``zarr.json`` document if pgps wrote it, else None."""
    attrs = {} if doc is None else doc.get("attributes", {})
    return attrs if isinstance(attrs, dict) and attrs.get("format") == "pgps" else None


def finish_store(path: Path, summary: dict[str, Any]) -> None:
    """Record dataset-level results (e.g. per-class foreground fraction) in the root, with
    the case index (the complete cases and their attributes, for readers that cannot list
    the store: :mod:`pgps_data.store.remote`) and ``complete``, in one atomic write."""
    doc = _read_json(path / "zarr.json")
    if doc is None:
        raise PGPSInputError(f"{path}: the store root vanished during the conversion; rerun")
    index = case_index(path, {TRAIN_GROUP: True, TEST_GROUP: False})
    doc["attributes"] = {**doc.get("attributes", {}), **summary, CASE_INDEX: index,
                         COMPLETE: True}
    _write_json_atomic(path / "zarr.json", doc, store=path, what="the store root")


# ------------------------------------------------------------------------------ the cases


def _check_case_id(case_id: str) -> str:
    """``case_id`` if it is a safe folder name (:func:`pgps_data.store.case_ids.check_case_id`)."""
    problem = case_id_problem(case_id)
    if problem is not None:
        raise PGPSInputError(f"not a safe name: {problem}; rename the case's files")
    return case_id


def case_is_complete(path: Path, case_id: str, is_test: bool) -> bool:
    """Whether ``case_id`` is fully written (so a rerun skips it): its ``complete`` flag
    is set and every array it needs is there (image, label unless a test case, and every
    index array its attributes name; the rule is :func:`pgps_data.store.completeness.missing_arrays`,
    the readers' own)."""
    if case_id_problem(case_id) is not None:
        return False
    folder = path / (TEST_GROUP if is_test else TRAIN_GROUP) / case_id
    return missing_arrays(folder, labelled=not is_test) == []


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
    """Write one case; ``complete`` is set last, after every array is on disk.

    Raises PGPSInputError for an unsafe case id (nothing is touched), when another task
    writes the same case (:func:`~pgps_data.store.lock.case_lock`; nothing is touched)
    and, one line naming the store, when the disk is full (the half-written case is
    removed again).
    """
    _check_case_id(case_id)
    with case_lock(path, case_id):
        _write_case_locked(path, case_id, image=image, label=label, indices=indices,
                           annotated=annotated, attrs=attrs, codec=codec)


def _write_case_locked(path: Path, case_id: str, *, image: np.ndarray, label: np.ndarray | None,
                       indices: dict[int, np.ndarray] | None, annotated: np.ndarray | None,
                       attrs: dict[str, Any], codec: str) -> None:
    is_test = label is None
    folder = path / (TEST_GROUP if is_test else TRAIN_GROUP) / case_id
    if folder.exists() or folder.is_symlink():  # an earlier, interrupted attempt
        safe_remove(folder, path)
    dtype = LAYOUTS[codec].image_dtype if codec in LAYOUTS else image.dtype  # as stored
    arrays: list[tuple[str, np.ndarray]] = [("image", image.astype(dtype, copy=False))]
    index_arrays: list[str] = []
    if label is not None:
        arrays.append(("label", label))
        for value, coords in (indices or {}).items():
            arrays.append((f"fg_{value}", coords))
            index_arrays.append(f"fg_{value}")
        if annotated is not None:
            arrays.append(("annotated", annotated))
            index_arrays.append("annotated")
    try:
        group = zarr.open_group(str(folder), mode="w-", zarr_format=3)
        for name, data in arrays:
            kind = name if name in ("image", "label") else "index"
            write_array(group, name, data, kind=kind, codec=codec)
        group.attrs.update({
            **attrs,
            "index_arrays": index_arrays,
            "is_test": is_test,
            "checksum": content_checksum(arrays),
        })
        group.attrs[COMPLETE] = True
    except OSError as exc:
        if folder.exists():
            try:
                safe_remove(folder, path)  # free what it took; a rerun writes it again
            except (OSError, PGPSInputError):
                pass
        raise _write_error(path, exc, f"case {case_id}") from None


def content_checksum(arrays: list[tuple[str, np.ndarray]]) -> str:
    """``"sha256:<hex>"`` of a case's arrays as stored, in the order given.

    The order is the writer's: image (as the layout's image dtype), label, then the index
    arrays in the order of the case's ``index_arrays`` attribute. Each array contributes
    its name, stored dtype and shape, then its bytes (C order, little-endian), so the same
    case converted with other settings (spacing, codec's dtype) gives another checksum.
    Labels are hashed as uint8 and index arrays as int32, as :func:`write_array` stores them.
    """
    h = hashlib.sha256()
    for name, data in arrays:
        data = np.asarray(data)
        kind = "image" if name == "image" else "label" if name == "label" else "index"
        dtype = {"label": np.dtype("<u1"), "index": np.dtype("<i4")}.get(
            kind, data.dtype.newbyteorder("<"))
        data = np.ascontiguousarray(data, dtype=dtype)
        h.update(f"{name}:{dtype.str}:{list(data.shape)};".encode())
        if data.size:  # an absent label's (0, 3) index adds its header only
            h.update(data.reshape(-1).view(np.uint8))
    return f"sha256:{h.hexdigest()}"


# ------------------------------------------------------------------------------ deleting


def safe_remove(target: Path, store: Path) -> None:
    """Delete ``target``, but only if it is pgps's to delete; else raise, deleting nothing.

    Allowed: a folder directly inside the ``cases/`` or ``test/`` of a pgps store (a
    case), not a symlink, resolved path and all; or one of pgps's own entries of the store root
    (``cases``, ``test``, ``zarr.json``, zarr's temp files) while the root is a pgps store
    or a bare root, i.e. when ``--overwrite`` clears it. Every delete in the writer and
    the converter goes through here.
    """
    target, store = Path(target), Path(store)
    real_store = store.resolve()
    if target.is_symlink():
        reason = "is a symlink"
    else:
        real = target.resolve()
        if real.parent in (real_store / TRAIN_GROUP, real_store / TEST_GROUP) and (
            target.name == real.name and case_id_problem(real.name) is None
        ) and root_state(store) == "store":  # a case folder of a pgps store, nobody else's
            _rm(real)
            return
        own = target.name in _OWN_ROOT_ENTRIES or _PARTIAL.fullmatch(target.name)
        if real.parent == real_store and own and root_state(store) in ("store", "bare", "empty"):
            _rm(real)
            return
        reason = "is not a case folder or an entry of the pgps store"
    raise PGPSInputError(
        f"{target}: refusing to delete it: it {reason} of {store}; nothing was deleted"
    )


def _rm(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)  # the only rmtree of the writer: safe_remove checked the target
    else:
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ JSON files


def _write_group(folder: Path, attrs: dict[str, Any], *, what: str, store: Path | None = None) -> None:
    """A zarr v3 group's ``zarr.json`` with its attributes, written in one atomic step."""
    store = folder if store is None else store
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(store, exc, what) from None
    doc = {"attributes": attrs, "zarr_format": 3, "node_type": "group"}
    _write_json_atomic(folder / "zarr.json", doc, store=store, what=what)


def _write_json_atomic(path: Path, doc: dict[str, Any], *, store: Path, what: str) -> None:
    """Write ``doc`` to ``path`` via a temp file beside it and ``os.replace``: a reader (or
    a crash) sees the old file or the new one, never a partial one."""
    data = json.dumps(doc, indent=2, allow_nan=True).encode()
    try:  # the temp name is one root_state and --overwrite know as pgps's own
        write_atomic(path, data, tmp=path.with_name(f"zarr.{uuid.uuid4().hex}.partial"))
    except OSError as exc:
        raise _write_error(store, exc, what) from None


def _write_error(store: Path, exc: OSError, what: str) -> PGPSInputError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return PGPSInputError(
            f"{store}: disk full while writing {what}; free some space and {RESUME}"
        )
    return PGPSInputError(
        f"{store}: cannot write {what} ({exc.strerror or exc}); fix the problem and rerun "
        "the same command to continue"
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _is_empty_group(folder: Path, doc: dict[str, Any] | None, *, root: bool = False) -> bool:
    """A zarr v3 group without attributes (and, below the root, without children)."""
    if doc is None:
        return root is False and folder.is_dir() and not any(folder.iterdir())
    if doc.get("node_type") != "group" or doc.get("attributes"):
        return False
    return root or not ({p.name for p in folder.iterdir()} - {"zarr.json"})
