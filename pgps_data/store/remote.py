"""Stores on object storage and HTTP, read-only: ``s3://``, ``gs://``, ``http(s)://`` URLs.

A store that pgps-convert wrote on a local disk and ``pgps-upload`` copied to a bucket or
a web server opens with the same :func:`~pgps_data.store.store.open_store` call, its URL
in place of the path (``file://`` URLs are local paths). Writing stays on POSIX paths.

- **Metadata** goes through zarr-python on an fsspec filesystem (:class:`RemoteStore`, a
  read-only ``FsspecStore``): the root's, each case's and each array's ``zarr.json``.
  Nothing is listed: the root's attributes carry the case index (written last by the
  writer), so plain HTTP, which cannot list, serves a store too.
- **Crops** are read by :class:`RemoteArray`, the fast reader with range requests in
  place of a mapped file: each shard's index is fetched once per case opened (a suffix
  range), each inner chunk the crops touch by one range request (all of a read's
  missing chunks at once, concurrently: one round trip of latency per read, not one per
  chunk; at most ``IN_FLIGHT`` = 16 requests at a time per process), verified against its
  crc32c and decoded into a per-process LRU of decoded chunks bounded in bytes
  (``PGPS_REMOTE_CACHE_MB``, default 256 per process, so per loader worker), so the many
  small crops of a stage do not refetch. A server that ignores ``Range`` is one line.
- **Failures**: every request has a timeout (``PGPS_REMOTE_TIMEOUT`` seconds, default 30)
  and a bounded number of retries (``PGPS_REMOTE_RETRIES``, default 2) with backoff, then
  one :class:`~pgps_data.errors.PGPSInputError` line naming the URL and the reason. The
  settings are environment variables so the loader's worker processes inherit them, as
  they inherit the credentials (``AWS_*`` for S3; ``AWS_ENDPOINT_URL`` or
  ``FSSPEC_S3_ENDPOINT_URL`` for another S3 endpoint).
- **Counts**: :data:`COUNTS` (requests, bytes fetched, retries, chunk-cache hits) per
  process; the loader reports the deltas of each read with its crops, so training logs
  requests and bytes per stage.

Needs ``pip install 'pgps[remote]'`` (fsspec's aiohttp for HTTP, s3fs for S3; gcsfs for
``gs://`` is not in the extra: install it to read Google Cloud Storage).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import FsspecStore

from pgps_data.errors import PGPSInputError
from pgps_data.store.fastread import STATS, FastArray, _Corrupt
from pgps_data.store.zarr_meta import parse_meta

__all__ = ["COUNTS", "RemoteArray", "RemoteStore", "counts", "is_url", "local_path", "open_remote", "reader_for"]

#: Per process: requests sent, bytes received, retries, chunk reads served from the cache.
COUNTS: dict[str, int] = {"requests": 0, "bytes": 0, "retries": 0, "cache_hits": 0}
IN_FLIGHT = 16  # concurrent requests per process at most (each worker is a process)
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_NEEDS = {"http": "aiohttp", "https": "aiohttp", "s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}


def is_url(path: object) -> bool:
    """Whether ``path`` is a URL (``scheme://...``) rather than a local path."""
    return isinstance(path, str) and bool(_URL.match(path))


def local_path(path: str | os.PathLike) -> Path | None:
    """The local path ``path`` names (a ``file://`` URL too), or None for a remote URL."""
    if not is_url(path):
        return Path(path)
    text = str(path)
    return Path(text[len("file://"):]) if text.startswith("file://") else None


def counts() -> tuple[int, int]:
    """(requests, bytes) fetched by this process so far."""
    return COUNTS["requests"], COUNTS["bytes"]


def settings() -> tuple[float, int, int]:
    """(timeout s, retries, cache bytes) from the environment (module docstring)."""
    try:
        timeout = float(os.environ.get("PGPS_REMOTE_TIMEOUT", "30"))
        retries = int(os.environ.get("PGPS_REMOTE_RETRIES", "2"))
        cache = int(float(os.environ.get("PGPS_REMOTE_CACHE_MB", "256")) * 2**20)
    except ValueError as exc:
        raise PGPSInputError(f"PGPS_REMOTE_*: not a number ({exc})") from None
    return max(timeout, 0.1), max(retries, 0), max(cache, 0)


class RemoteStore(FsspecStore):
    """zarr's read-only fsspec store with a timeout, bounded retries and counts per request.

    A missing key is ``None`` (zarr's convention); anything else that fails every try is
    one :class:`PGPSInputError` line naming the URL.
    """

    url: str = ""

    @property
    def root(self) -> str:
        """The store's URL (what error lines name, as a local store's root path)."""
        return self.url

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        timeout, retries, _ = settings()
        last: BaseException | None = None
        for attempt in range(retries + 1):
            if attempt:
                COUNTS["retries"] += 1
                await asyncio.sleep(min(0.25 * 2 ** (attempt - 1), 2.0))
            try:
                value = await asyncio.wait_for(super().get(key, prototype, byte_range), timeout)
            except PermissionError as exc:  # no credentials: retrying cannot help
                raise PGPSInputError(f"access denied ({_reason(exc)}); check the credentials "
                                     "(AWS_* environment variables for S3)",
                                     path=f"{self.url}/{key}") from None
            except (TypeError, AttributeError, NameError):  # a bug, not the network
                raise
            except Exception as exc:  # noqa: BLE001  (network errors of every client library)
                if "Credentials" in type(exc).__name__:  # botocore's: retrying cannot help
                    raise PGPSInputError(
                        f"no credentials ({_reason(exc)}); set AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY (or a profile)", path=f"{self.url}/{key}") from None
                last = exc
                continue
            COUNTS["requests"] += 1
            COUNTS["bytes"] += 0 if value is None else len(value)
            return value
        what = (f"timed out ({timeout:g} s)" if isinstance(last, TimeoutError)
                else f"unreachable ({_reason(last)})")
        raise PGPSInputError(f"{what} after {retries + 1} tries (PGPS_REMOTE_TIMEOUT and "
                             "PGPS_REMOTE_RETRIES set the limits)", path=f"{self.url}/{key}")

    def fetch(self, key: str, start: int | None, length: int) -> bytes | None:
        """``length`` bytes of ``key`` from ``start`` (None: its last ``length`` bytes), or
        None when the object does not exist. Fewer or more bytes than asked is one line."""
        return self.fetch_many([(key, start, length)])[0]

    def fetch_many(self, items: list[tuple[str, int | None, int | None]]) -> list[bytes | None]:
        """Several :meth:`fetch` es at once, concurrently (one round trip of latency, not
        one per item); ``length`` None fetches the whole object."""
        async def one(key: str, start: int | None, length: int | None) -> bytes | None:
            request = (None if length is None else SuffixByteRequest(length) if start is None
                       else RangeByteRequest(start, start + length))
            buf = await self.get(key, default_buffer_prototype(), request)
            if buf is None:
                return None
            data = buf.to_bytes()
            if length is not None and len(data) != length:
                raise PGPSInputError(
                    f"asked for {length} bytes, got {len(data)} (a truncated object, or a "
                    "server that does not honour HTTP Range requests, as a plain "
                    "`python -m http.server`)",
                    path=f"{self.url}/{key}")
            return data

        async def all_of() -> list[bytes | None]:
            gate = asyncio.Semaphore(IN_FLIGHT)  # a big crop touches hundreds of chunks

            async def gated(item: tuple[str, int | None, int | None]) -> bytes | None:
                async with gate:
                    return await one(*item)

            return list(await asyncio.gather(*(gated(item) for item in items)))

        return sync(all_of())


def open_remote(url: str) -> zarr.Group:
    """The root group of the store at ``url``, read-only; one line if it cannot be."""
    url = url.rstrip("/")
    scheme = url.split("://", 1)[0].lower()
    timeout, _, _ = settings()
    options: dict[str, Any] = {}
    if scheme == "s3":  # one attempt each inside s3fs; our loop retries (bounded, counted)
        options = {"config_kwargs": {
            "connect_timeout": timeout, "read_timeout": timeout,
            "retries": {"max_attempts": 1}}}
    try:
        store = RemoteStore.from_url(url, storage_options=options, read_only=True)
    except ImportError as exc:
        need = _NEEDS.get(scheme, exc.name or "an fsspec filesystem")
        raise PGPSInputError(f"reading {scheme}:// stores needs {need} (pip install "
                             f"'pgps[remote]'{'' if need != 'gcsfs' else ' gcsfs'})",
                             path=url) from None
    except ValueError as exc:  # fsspec: an unknown protocol
        raise PGPSInputError(f"not a store URL ({_reason(exc)})", path=url) from None
    store.url = url
    try:
        return zarr.open_group(store, mode="r")
    except PGPSInputError:
        raise
    except Exception as exc:  # noqa: BLE001  (zarr raises many types for what is not a group)
        if _missing(store, "zarr.json"):  # asked only now: a store opens in one request
            raise PGPSInputError("no store there (no zarr.json; made by pgps-convert and "
                                 "uploaded with pgps-upload?)", path=url) from None
        raise PGPSInputError(f"not a readable zarr v3 store ({type(exc).__name__}: "
                             f"{_reason(exc)})", path=url) from None


def _missing(store: RemoteStore, key: str) -> bool:
    return sync(store.get(key, default_buffer_prototype())) is None


def _reason(exc: BaseException | None) -> str:
    text = " ".join(str(exc).split()) if exc is not None else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def reader_for(arr: zarr.Array, verify: str | None = None) -> FastArray | None:
    """The fast reader of ``arr``: over range requests for a remote store, over mapped
    files for a local one; None where zarr-python must read it (``PGPS_NO_FAST_READ=1``
    turns the local fast path off, for comparisons)."""
    if isinstance(arr.store, RemoteStore):
        return RemoteArray.open(arr, verify)
    if os.environ.get("PGPS_NO_FAST_READ") == "1":
        return None
    return FastArray.open(arr, verify)


class ChunkCache:
    """Decoded chunks of this process, least recently used dropped past ``limit`` bytes."""

    def __init__(self) -> None:
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.nbytes = 0

    def holds(self, key: tuple) -> bool:
        return key in self._items

    def get(self, key: tuple) -> np.ndarray | None:
        chunk = self._items.get(key)
        if chunk is not None:
            self._items.move_to_end(key)
            COUNTS["cache_hits"] += 1
        return chunk

    def put(self, key: tuple, chunk: np.ndarray) -> None:
        limit = settings()[2]
        if chunk.nbytes > limit:
            return
        self._items[key] = chunk
        self.nbytes += chunk.nbytes
        while self.nbytes > limit:
            _, old = self._items.popitem(last=False)
            self.nbytes -= old.nbytes

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0


CACHE = ChunkCache()


class RemoteArray(FastArray):
    """:class:`FastArray` over range requests (module docstring); same reads, same checks."""

    def __init__(self, store: RemoteStore, path: str, meta: dict, verify: str | None = None):
        super().__init__(path, meta, verify)  # type: ignore[arg-type]  (root: the array's key)
        self.store = store
        self.where = f"{store.url}/{path}"  # what error lines name
        self._present = False  # its zarr.json seen since a missing object made us ask

    @classmethod
    def open(cls, arr: zarr.Array, verify: str | None = None) -> RemoteArray | None:  # type: ignore[override]
        """A reader for ``arr`` of a :class:`RemoteStore`, or None (zarr-python reads it)."""
        if not isinstance(arr.store, RemoteStore) or arr.metadata.zarr_format != 3:
            return None
        meta = parse_meta(arr.metadata.to_dict())
        return None if meta is None else cls(arr.store, arr.path, meta, verify)

    def _will_read(self, pieces: list[tuple[tuple, tuple, tuple]]) -> None:
        """Fetch every chunk the read touches that is not cached, concurrently."""
        self._prefetch({key for key, _, _ in pieces})

    def _prefetch(self, keys: set[tuple[int, ...]]) -> None:
        """Shard indexes, then chunks, each group in one concurrent batch of requests; only
        when the cache can hold them all (else the reads fetch one by one)."""
        want = sorted(k for k in keys if not CACHE.holds((self.where, k)))
        if len(want) < 2 or len(want) * self._chunk_nbytes > settings()[2]:
            return
        if self.shard is not None:
            shards = sorted({tuple(i // p for i, p in zip(k, self._per_shard)) for k in want}
                            - set(self._indices))
            raws = self.store.fetch_many([self._index_request(sk) for sk in shards])
            for sk, raw in zip(shards, raws):
                if raw is None:
                    self._check_present()
                self._indices[sk] = (None if raw is None
                                     else self._parse_index(sk, np.frombuffer(raw, np.uint8)))
        located = [(k, loc) for k in want if (loc := self._locate(k)) is not None]
        datas = self.store.fetch_many([(key, off, None if off is None else n)
                                       for _, (key, off, n) in located])
        check = self.checksum and self.verify != "off"
        for (k, _), data in zip(located, datas):
            if data is not None:
                CACHE.put((self.where, k), self._decoded(k, data, check))

    def _chunk(self, k: tuple[int, ...], verify: str | None = None) -> np.ndarray | None:
        cached = CACHE.get((self.where, k)) if verify is None else None
        if cached is not None:
            STATS["chunks"] += 1
            return cached
        loc = self._locate(k)
        if loc is None:
            return None
        key, offset, nbytes = loc
        data = self.store.fetch_many([(key, offset, None if offset is None else nbytes)])[0]
        if data is None:
            self._check_present()
            return None
        STATS["chunks"] += 1
        chunk = self._decoded(k, data, self.checksum and (verify or self.verify) != "off")
        CACHE.put((self.where, k), chunk)
        return chunk

    def _decoded(self, k: tuple[int, ...], data: bytes, check: bool) -> np.ndarray:
        """Chunk ``k`` decoded from its stored bytes into a new array (the cache keeps it);
        a bad checksum or undecodable bytes is one line naming the chunk."""
        self._scratch = np.empty(self.chunks, self._stored)
        try:
            if self._decoders:
                self._decode(np.frombuffer(data, np.uint8), check)
            elif len(data) == self._scratch.nbytes:
                self._scratch.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, np.uint8)
            else:
                raise ValueError(f"{len(data)} bytes, expected {self._scratch.nbytes}")
        except _Corrupt:
            raise self._bad(k) from None
        except (RuntimeError, ValueError, TypeError) as exc:  # numcodecs on damaged bytes
            raise self._bad(k, f"cannot be decoded ({type(exc).__name__}: {exc})") from None
        STATS["bytes_decoded"] += self._chunk_nbytes
        return self._scratch

    def _locate(self, k: tuple[int, ...]) -> tuple[str, int | None, int] | None:
        if self.shard is None:  # an unsharded chunk: one object, fetched whole
            return f"{self.root}/{self._key(k)}", None, -1
        return super()._locate(k)

    def _check_present(self) -> None:
        """A missing object is all fill (zarr does not write those), unless the whole array
        has gone since the index was written: asked once per array, at its first gap."""
        if not self._present:
            if self.store.fetch_many([(f"{self.root}/zarr.json", None, None)])[0] is None:
                raise PGPSInputError(
                    "array is missing (deleted after the upload?) (upload the store again "
                    "with pgps-upload into an empty prefix)", path=self.where)
            self._present = True

    def _read_index(self, sk: tuple[int, ...]) -> list[tuple[int, int]] | None:
        raw = self.store.fetch(*self._index_request(sk))  # type: ignore[arg-type]
        if raw is None:
            self._check_present()
            return None
        return self._parse_index(sk, np.frombuffer(raw, np.uint8))

    def _index_request(self, sk: tuple[int, ...]) -> tuple[str, int | None, int]:
        size = 16 * math.prod(self._per_shard) + (4 if self._index_crc else 0)
        return f"{self.root}/{self._key(sk)}", 0 if self._index_start else None, size
