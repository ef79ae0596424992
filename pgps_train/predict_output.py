"""pgps-predict's output folder: never among the inputs, never replacing a file it did not write.

The rules (issue 7) and why:

- OUT_DIR may not be INPUT_DIR or lie inside it (compared as resolved real paths, so a
  symlink or ``..`` does not hide it): label maps written there would replace the images
  they came from, or be taken for images by the next run. INPUT_DIR *inside* OUT_DIR is
  allowed: pgps-predict writes only plain files at OUT_DIR's top level, never into a
  subfolder, and an output whose real path is one of the input files (an input symlinked
  into OUT_DIR) is refused whatever the flags.
- ``OUT_DIR/.pgps-predict.json`` (the manifest) lists every file pgps-predict wrote
  there, with its size, sha256, case, model folder and time. A file at an output's name
  is replaced only when the manifest lists it *with the same content* (a label map a user
  corrected by hand and saved in place is theirs now), or with ``--overwrite``.
  Directories are never replaced.
- Every file is written to a hidden temporary file in OUT_DIR, flushed to disk and renamed
  over its name (``os.replace``), so a kill leaves the old file or the new one, never half
  of one. The manifest is updated the same way *before* the rename, recording the content
  it replaces as well, so a kill between the two leaves a folder the next run accepts.
- One run at a time per OUT_DIR: an exclusive ``flock`` on the folder itself (no lock
  file to leave behind); a second run is one line, exit 2 (on a filesystem without locks
  the run goes on with a warning). Temporary files of a killed run
  (``.pgps-tmp-<pid>-<name>``, pgps-predict's own names) are removed by the next run,
  under the lock.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pgps_data.errors import PGPSInputError
from pgps_data.store.atomic_write import write_atomic

MANIFEST = ".pgps-predict.json"
TMP_PREFIX = ".pgps-tmp-"
_STALE_TMP = re.compile(re.escape(TMP_PREFIX) + r"\d+-.+")
_FORMAT = 1


def check_locations(input_dir: str | Path, out_dir: str | Path) -> None:
    """Refuse an OUT_DIR that is INPUT_DIR or lies inside it (resolved, symlinks followed)."""
    inp, out = Path(input_dir).resolve(), Path(out_dir).resolve()
    if out == inp:
        raise PGPSInputError(f"{out_dir}: is the input folder {input_dir} (real path {inp}); "
                             "give another OUT_DIR, pgps-predict never writes among its inputs")
    if inp in out.parents:
        raise PGPSInputError(f"{out_dir}: lies inside the input folder {input_dir} (real path "
                             f"{out}); give an OUT_DIR outside it")
    if out.exists() and not out.is_dir():
        raise PGPSInputError(f"{out_dir}: exists and is not a directory (give a folder)")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OutputDir:
    """OUT_DIR for one run: lock, manifest, ownership checks and atomic writes.

    Use as a context manager (``with OutputDir(...) as out:``): entering creates the folder,
    takes the lock, reads the manifest and clears stale temporary files; leaving releases
    the lock. ``check(names)`` refuses, before anything is predicted, every name that may
    not be replaced; ``write(name, writer)`` writes one file atomically and records it.
    """

    def __init__(self, out_dir: str | Path, *, input_files: Iterable[str | Path] = (),
                 model_dir: str | Path | None = None, overwrite: bool = False):
        self.root = Path(out_dir)
        self.model_dir = None if model_dir is None else str(Path(model_dir).resolve())
        self.overwrite = overwrite
        self._inputs = {os.path.realpath(p) for p in input_files}
        self._fd: int | None = None
        self._checked: dict[str, tuple[int, int, int] | None] = {}
        self.manifest: dict[str, Any] = {}
        self.unlocked = False  # True where the filesystem refused the lock

    # -------------------------------------------------------------------- lifecycle

    def __enter__(self) -> OutputDir:
        self.root.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise PGPSInputError(f"{self.root}: another pgps-predict is writing into this "
                                 "folder; wait for it or give another OUT_DIR") from None
        except OSError as exc:  # a filesystem without flock (some network mounts)
            if exc.errno not in (errno.ENOLCK, errno.EBADF, errno.EOPNOTSUPP, errno.EINVAL):
                self.close()
                raise
            self.unlocked = True
        try:
            self.manifest = self._read_manifest()
            self._remove_stale_temporaries()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the lock (closing the folder's descriptor)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -------------------------------------------------------------------- checks

    def check(self, names: Iterable[str]) -> None:
        """Raise one PGPSInputError line for the first name that may not be written.

        Refused always: a name whose real path is an input file, a directory. Refused
        unless ``overwrite``: an existing file the manifest does not list with its
        current content. The line names the first such file and how many there are.
        """
        foreign: list[Path] = []
        for name in dict.fromkeys(names):
            path = self.root / name
            self._refuse_always(path)
            if self._owned_or_absent(name):
                self._checked[name] = _stat_key(path)
            elif self.overwrite:
                self._checked[name] = _stat_key(path)
            else:
                foreign.append(path)
        if foreign:
            more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
            raise PGPSInputError(
                f"{foreign[0]}: exists and was not written by pgps-predict (not in {MANIFEST}, "
                f"or changed since){more}; move it away or give --overwrite to replace it")

    def _refuse_always(self, path: Path) -> None:
        if os.path.realpath(path) in self._inputs and not path.is_symlink():
            raise PGPSInputError(f"{path}: is one of the input files; pgps-predict never "
                                 "replaces an input (give another OUT_DIR)")
        if path.is_dir() and not path.is_symlink():
            raise PGPSInputError(f"{path}: is a directory where pgps-predict writes a file; "
                                 "move it away or give another OUT_DIR")

    def _owned_or_absent(self, name: str) -> bool:
        path = self.root / name
        if not os.path.lexists(path):
            return True
        entry = self.manifest["files"].get(name)
        if not isinstance(entry, dict) or path.is_symlink() or not path.is_file():
            return False
        size = path.stat().st_size
        known = [entry, entry.get("replaces") or {}]
        if not any(k.get("size") == size for k in known):
            return False
        digest = sha256_file(path)
        return any(k.get("size") == size and k.get("sha256") == digest for k in known)

    # -------------------------------------------------------------------- writing

    def write(self, name: str, writer: Callable[[Path], None], *, case_id: str | None = None) -> Path:
        """Write ``OUT_DIR/name`` atomically: ``writer(tmp_path)`` then rename; record it.

        ``writer`` gets a hidden temporary path in OUT_DIR ending like ``name`` (so a
        format chosen by ending, NIfTI or NRRD, is kept). A file that appeared at ``name``
        since :meth:`check` is checked again. The temporary file never outlives a failure.
        """
        path = self.root / name
        if name not in self._checked or _stat_key(path) != self._checked[name]:
            self.check([name])
        tmp = self._tmp_path(name)
        try:
            writer(tmp)
            _fsync(tmp)
            entry = {"size": tmp.stat().st_size, "sha256": sha256_file(tmp), "case_id": case_id,
                     "model_dir": self.model_dir, "written": _now()}
            old = self.manifest["files"].get(name)
            if os.path.lexists(path) and isinstance(old, dict):
                entry["replaces"] = {"size": old.get("size"), "sha256": old.get("sha256")}
            self.manifest["files"][name] = entry
            self._save_manifest()  # before the rename: a kill in between is still ours
            try:
                os.replace(tmp, path)
            except OSError:  # not written after all: the manifest says so again
                self._forget(name, old)
                raise
        finally:
            if os.path.lexists(tmp):
                tmp.unlink()
        _fsync_dir(self.root)
        self._checked[name] = _stat_key(path)
        return path

    def _tmp_path(self, name: str) -> Path:
        return self.root / f"{TMP_PREFIX}{os.getpid()}-{name}"

    # -------------------------------------------------------------------- manifest

    def _read_manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST
        fresh = {"tool": "pgps-predict", "format": _FORMAT, "created": _now(), "files": {}}
        if not os.path.lexists(path):
            return fresh
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            ok = isinstance(doc, dict) and isinstance(doc.get("files"), dict)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            ok = False
        if not ok:
            if self.overwrite:
                return fresh
            raise PGPSInputError(f"{path}: damaged pgps-predict manifest; without it no file "
                                 "here is known to be pgps's own (give --overwrite to replace "
                                 "them and start a new manifest)")
        return doc

    def _save_manifest(self) -> None:
        self.manifest["updated"] = _now()
        if self.model_dir is not None:
            self.manifest["model_dir"] = self.model_dir
        write_atomic(self.root / MANIFEST,
                     (json.dumps(self.manifest, indent=2) + "\n").encode("utf-8"),
                     tmp=self._tmp_path(MANIFEST))

    def _forget(self, name: str, old: object) -> None:
        if old is None:
            self.manifest["files"].pop(name, None)
        else:
            self.manifest["files"][name] = old
        try:
            self._save_manifest()
        except OSError:  # the entry it leaves accepts the old content too ("replaces")
            pass

    def _remove_stale_temporaries(self) -> None:
        for path in self.root.iterdir():
            if _STALE_TMP.fullmatch(path.name) and (path.is_file() or path.is_symlink()):
                path.unlink()


def is_disk_full(exc: BaseException) -> bool:
    """True for 'no space left' and 'quota exceeded' (no later case can be written)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


# ----------------------------------------------------------------------------- internals


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync(path)
    except OSError:  # some filesystems refuse fsync on a directory; the rename still holds
        pass


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
