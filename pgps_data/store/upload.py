"""Copy a finished local store to object storage (``pgps-upload``), root last, verified.

Stores are written on POSIX paths only (the lock, the atomic root and the safe deletes
need them); this is how one reaches a bucket. What makes it safe:

- Only a **complete** store is uploaded, under its lock (no conversion runs meanwhile), and
  only what the store lists: each listed case's files and the root; a case left half
  written, the lock file and anything else in the folder stay behind.
- The root ``zarr.json`` (which holds ``complete`` and the case index) goes **last**, after
  every other file is verified, so a reader never sees a root naming a case whose files
  are not all there; an interrupted upload leaves no root, and no reader opens it.
- A target prefix that already holds objects is refused, unless they are an unfinished
  upload of this very store (its marker ``.pgps-upload.json`` names the store's creation
  id): the rerun continues, skipping files already there at their size.
- **Verify**: "full" (the default) reads every uploaded file back and compares its sha256;
  "sizes" compares sizes only. The marker is removed after the root is verified.

``http(s)://`` is read-only here: serve the store folder as it is with any web server that
honours ``Range`` (nginx, Apache, a CDN) instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pgps_data.errors import PGPSInputError
from pgps_data.store.completeness import CASE_INDEX
from pgps_data.store.lock import LOCK_NAME, store_lock
from pgps_data.store.remote import is_url, local_path
from pgps_data.store.store import TEST_GROUP, TRAIN_GROUP, open_store

__all__ = ["MARKER", "upload"]

MARKER = ".pgps-upload.json"


def upload(source: str | os.PathLike, url: str, *, verify: str = "full",
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """Upload the complete store ``source`` to ``url`` (module docstring); a summary dict."""
    if verify not in ("full", "sizes"):
        raise ValueError(f"verify must be 'full' or 'sizes', got {verify!r}")
    if local_path(source) is None:
        raise PGPSInputError(f"{source}: the store to upload must be a local path")
    if not is_url(url):
        raise PGPSInputError(f"{url}: not a URL (s3://bucket/prefix, gs://..., file://...); "
                             "for a local copy use cp -r")
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("http", "https"):
        raise PGPSInputError(f"{url}: HTTP is read-only for pgps: copy the store folder onto "
                             "the web server as it is (it must honour Range requests)")
    store = open_store(source)
    path = Path(store.path)
    with store_lock(path, activity="upload"):
        store = open_store(path)  # as it is now that no conversion can run
        if not store.complete:
            raise PGPSInputError(f"{path}: conversion incomplete ({len(store.missing_cases)} "
                                 "case(s) missing): finish it with pgps-convert, then upload")
        root_doc = json.loads((path / "zarr.json").read_text())
        if CASE_INDEX not in root_doc.get("attributes", {}):
            raise PGPSInputError(f"{path}: written before stores carried a case index: rerun "
                                 "pgps-convert with the same arguments (it adds it), then upload")
        files = _listed_files(path, store)
        try:
            return _copy(path, url.rstrip("/"), files, store.meta.get("creation_id"), verify,
                         log)
        except PGPSInputError:
            raise
        except Exception as exc:  # noqa: BLE001  (full disk, permissions, network: one line)
            text = " ".join(str(exc).split())[:200]
            raise PGPSInputError(f"upload failed ({type(exc).__name__}: {text}); the store "
                                 "does not open there until its root is uploaded: rerun the "
                                 "same command to continue", path=url) from None


def _listed_files(path: Path, store: Any) -> list[str]:
    """Relative paths of the files a reader of ``store`` needs, root zarr.json excluded."""
    out = [f"{g}/zarr.json" for g in (TRAIN_GROUP, TEST_GROUP) if (path / g / "zarr.json").is_file()]
    for group, ids in ((TRAIN_GROUP, store.case_ids), (TEST_GROUP, store.test_ids)):
        for cid in ids:
            folder = path / group / cid
            for dirpath, _, names in os.walk(folder):
                for name in names:
                    if name == LOCK_NAME or name.startswith("."):
                        continue
                    out.append(str(Path(dirpath, name).relative_to(path)))
    return sorted(out)


def _fs(url: str):  # noqa: ANN202
    import fsspec  # noqa: PLC0415

    try:
        return fsspec.url_to_fs(url)
    except ImportError as exc:
        raise PGPSInputError(f"{url}: writing there needs {exc.name} (pip install "
                             "'pgps[remote]')") from None


def _copy(path: Path, url: str, files: list[str], creation_id: str | None, verify: str,
          log: Callable[[str], None]) -> dict[str, Any]:
    fs, base = _fs(url)
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    if local:
        fs.makedirs(base, exist_ok=True)  # local targets need their folders; buckets do not
    t0 = time.perf_counter()
    try:
        there = {p[len(base):].lstrip("/"): int(info.get("size") or 0)
                 for p, info in fs.find(base, detail=True).items()} if fs.exists(base) else {}
    except Exception as exc:  # noqa: BLE001
        raise PGPSInputError(f"{url}: cannot list the target ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:160]})") from None
    marker = f"{base}/{MARKER}"
    if there:
        ours = MARKER in there and _marker_id(fs, marker) == creation_id
        if not ours and there.get("zarr.json") is not None and _root_id(fs, base) == creation_id:
            raise PGPSInputError(f"{url}: this store is already uploaded there (same creation "
                                 "id); pgps-inspect URL --verify checks it")
        if not ours:
            raise PGPSInputError(f"{url}: not empty ({len(there)} object(s) that are not an "
                                 "unfinished upload of this store); upload into an empty prefix")
        log(f"continuing an unfinished upload to {url} ({len(there)} object(s) there)")
    else:
        fs.pipe_file(marker, json.dumps({"creation_id": creation_id}).encode())
    sent = skipped = nbytes = 0
    for rel in files:
        size = (path / rel).stat().st_size
        if there.get(rel) == size:
            skipped += 1
            continue
        if local:
            fs.makedirs(f"{base}/{rel}".rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(path / rel), f"{base}/{rel}")
        sent += 1
        nbytes += size
    _verify(fs, base, path, files, verify)
    fs.put_file(str(path / "zarr.json"), f"{base}/zarr.json")  # last: the store now opens
    _verify(fs, base, path, ["zarr.json"], "full")
    fs.rm_file(marker)
    seconds = time.perf_counter() - t0
    log(f"uploaded {sent} file(s), {nbytes / 2**20:.1f} MiB ({skipped} already there) to "
        f"{url} in {seconds:.1f} s; verified ({verify})")
    return {"files": len(files) + 1, "sent": sent, "skipped": skipped, "bytes": nbytes,
            "seconds": round(seconds, 3), "verify": verify}


def _verify(fs: Any, base: str, path: Path, files: list[str], how: str) -> None:
    """Every file of ``files`` is at ``base`` with the local size (and, "full", bytes)."""
    for rel in files:
        local = path / rel
        try:
            size = int(fs.size(f"{base}/{rel}"))
        except FileNotFoundError:
            size = -1
        if size != local.stat().st_size:
            raise PGPSInputError(f"{base}/{rel}: upload verification failed: {size} bytes "
                                 f"there, {local.stat().st_size} here; rerun pgps-upload")
        if how == "full":
            remote = hashlib.sha256(fs.cat_file(f"{base}/{rel}")).hexdigest()
            if remote != hashlib.sha256(local.read_bytes()).hexdigest():
                raise PGPSInputError(f"{base}/{rel}: upload verification failed: its bytes "
                                     "differ from the local file's; rerun pgps-upload")


def _marker_id(fs: Any, marker: str) -> str | None:
    try:
        return json.loads(fs.cat_file(marker)).get("creation_id")
    except Exception:  # noqa: BLE001  (a marker that is not ours)
        return None


def _root_id(fs: Any, base: str) -> str | None:
    try:
        return json.loads(fs.cat_file(f"{base}/zarr.json")).get("attributes", {}).get("creation_id")
    except Exception:  # noqa: BLE001
        return None
