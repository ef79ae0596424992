"""Fast, synchronous crop reads from zarr v3 arrays on a local disk.

zarr-python spends most of a small crop's time in its own machinery (event loop, one
coroutine per chunk, the shard index re-read per request): measured on 2 cores with zarr
3.1.6, about 78 % of its time per crop, 0.15-0.3 ms per chunk touched, so its crops ran at
1-18 % of the speed of copying them out of a memory-mapped ``.npy``, and this reader's at
12-34 % (``tools/bench_read.py`` measures both). The training loader reads thousands of
small boxes per second, so this module reads the very same files itself: it parses
``zarr.json``, caches each shard's index once, reads the inner chunks from a cached
read-only map of the shard file and decodes them with numcodecs (single-threaded) into a
scratch chunk; uncompressed chunks are sliced straight out of the map without any decode.
The store stays plain zarr v3; zarr-python remains the reference and the fallback
(:func:`read_box_zarr`) for anything this reader does not know
(:meth:`FastArray.open` then returns ``None``).

Checksums: where zarr wrote a ``crc32c`` codec (every array of a pgps store), the reader
verifies it; a mismatch is one :class:`~pgps_data.errors.PGPSInputError` line naming the
array's path (store, case, array) and the chunk. When (``verify``):

- ``"once"`` (the default, :data:`DEFAULT_VERIFY`): each chunk the first time this process
  reads it, before any of its voxels is used; then it is trusted for as long as its file
  keeps its identity (:mod:`pgps_data.store.mapped_files`): a corruption that appears on disk
  during a run is seen by the next process, or after a re-conversion;
- ``"always"``: every chunk on every read (over the compressed bytes just before they are
  decoded; uncompressed: over the mapped chunk before it is sliced). ``tools/bench_read.py``
  measured 1.2-1.3x on single compressed crops and 1.4-2.0x uncompressed (the crc reads
  every touched chunk whole), over the goals of 1.1x and 1.5x; "once" measured 1.0x;
- ``"off"``: benchmarks only. Arrays without a crc (older stores) are not verified.

Boxes are given by an origin (may be negative) and a shape (may exceed the array): voxels
outside the array get ``pad_value``; chunks inside the array that were never written
(zarr skips all-fill chunks) read as the array's fill value.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numcodecs.blosc
import numcodecs.zstd
import numpy as np
import zarr

from pgps_data.errors import PGPSInputError
from pgps_data.store.chunk_crc import corrupt_chunk, crc_matches, read_box_zarr
from pgps_data.store.mapped_files import FILES
from pgps_data.store.zarr_meta import parse_meta as _parse_meta

__all__ = ["DEFAULT_VERIFY", "STATS", "FastArray", "read_box_zarr"]

#: Process-wide counters (tests use them to prove the fast path ran; benches for amplification).
STATS: dict[str, int] = {"reads": 0, "boxes": 0, "chunks": 0, "bytes_decoded": 0, "bytes_mapped": 0}

_MISSING = 2**64 - 1
#: When chunk checksums are verified, for compressed and for uncompressed arrays.
DEFAULT_VERIFY = {"compressed": "once", "uncompressed": "once"}
_VERIFY = ("always", "once", "off")
_GONE = (
    "array is missing (deleted after the store was opened?) "
    "(re-convert the case with pgps-convert or restore it)"
)
# Workers run many readers in parallel: decode on the calling thread only, never blosc's pool.
numcodecs.blosc.use_threads = False


class FastArray:
    """A zarr v3 array on local disk, opened for fast box reads (see module docstring)."""

    def __init__(self, root: Path, meta: dict, verify: str | None = None):
        self.root = root
        self.where = str(root)  # what error lines name (a remote reader: the array's URL)
        self.shape: tuple[int, ...] = meta["shape"]
        self.dtype: np.dtype = meta["dtype"].newbyteorder("=")
        self.fill_value = meta["fill_value"]
        self.chunks: tuple[int, ...] = meta["chunks"]  # the read unit (inner chunk if sharded)
        self.shard: tuple[int, ...] | None = meta["shard"]
        self._stored = meta["dtype"]
        self._decoders: list[str] = meta["decoders"]
        self.checksum = "crc32c" in self._decoders  # False: an old store, nothing to verify
        self._raw = [d for d in self._decoders if d != "crc32c"]  # the decoding codecs
        if verify is None:
            verify = DEFAULT_VERIFY["compressed" if self._raw else "uncompressed"]
        if verify not in _VERIFY:
            raise ValueError(f"verify must be one of {_VERIFY}, got {verify!r}")
        self.verify = verify
        self._index_start = meta["index_start"]
        self._index_crc = meta["index_crc"]
        self._index_be = meta["index_be"]
        self._key = meta["key"]
        self._chunk_nbytes = math.prod(self.chunks) * self._stored.itemsize
        self._where: dict[tuple[int, ...], tuple[str, int, int] | None] = {}
        self._per_shard = (
            tuple(s // c for s, c in zip(self.shard, self.chunks)) if self.shard else None
        )
        self._indices: dict[tuple[int, ...], list[tuple[int, int]] | None] = {}
        self._scratch = np.empty(self.chunks, self._stored)
        self.reads = 0  # read()/read_many() calls served by this reader

    # ----------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, arr: zarr.Array, verify: str | None = None) -> FastArray | None:
        """Open ``arr`` for the fast path, or return ``None`` to fall back to zarr-python.

        ``None`` means: not on a local filesystem store, or a layout this reader does not
        implement (codecs other than bytes/blosc/zstd/crc32c, transposes, nested shards,
        irregular grids, storage transformers, unusual dtypes or fill values).
        ``verify`` says when checksums are verified (module docstring; None: the default).
        """
        store = arr.store
        if not isinstance(store, zarr.storage.LocalStore) or arr.metadata.zarr_format != 3:
            return None
        root = Path(store.root) / arr.path
        try:
            meta = _parse_meta(json.loads((root / "zarr.json").read_text()))
        except FileNotFoundError:
            raise PGPSInputError(_GONE, path=root) from None
        except (OSError, ValueError):
            return None
        return None if meta is None else cls(root, meta, verify)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    # ------------------------------------------------------------------------------ reads
    def read(
        self,
        origin: Sequence[int],
        shape: Sequence[int],
        out: np.ndarray | None = None,
        pad_value: float = 0,
        dtype: np.dtype | type | None = None,
    ) -> np.ndarray:
        """Read the box ``origin .. origin + shape``; returns ``out`` or a new array.

        ``origin``/``shape`` cover the trailing axes (spatial Z, Y, X for a (C, Z, Y, X)
        image); leading axes come whole. ``dtype`` converts on the fly (a float16 store read
        as float32 costs no extra pass). ``out`` lets a caller decode into shared memory.
        """
        many = self.read_many([origin], shape, None if out is None else out[None], pad_value, dtype)
        return many[0]

    def read_many(
        self,
        origins: Sequence[Sequence[int]] | np.ndarray,
        shape: Sequence[int],
        out: np.ndarray | None = None,
        pad_value: float = 0,
        dtype: np.dtype | type | None = None,
    ) -> np.ndarray:
        """Read ``n`` boxes of one ``shape``; returns them stacked as ``(n, ...)``.

        Every chunk touched by any box is read and decoded once and then copied into all
        the boxes that overlap it, so clustered boxes (foreground-forced crops) cost about
        one read of their union, and spread boxes cost no more than separate reads.
        """
        origins = np.asarray(origins, dtype=np.int64).reshape(-1, len(shape))
        full = (len(origins), *self._full_shape(shape))
        if out is None:
            out = np.empty(full, dtype or self.dtype)
        elif out.shape != full:
            raise ValueError(f"out has shape {out.shape}, expected {full}")
        self._read_boxes(origins, tuple(int(s) for s in shape), out, pad_value)
        return out

    def _full_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        lead = self.ndim - len(shape)
        if lead < 0 or any(int(s) < 0 for s in shape):
            raise ValueError(f"box shape {tuple(shape)} does not fit array shape {self.shape}")
        return (*self.shape[:lead], *(int(s) for s in shape))

    def _read_boxes(self, origins: np.ndarray, shape: tuple, out: np.ndarray, pad) -> None:
        """Core: list (chunk, source, destination) pieces, pad outside, read each chunk once."""
        self.reads += 1
        STATS["reads"] += 1
        STATS["boxes"] += len(origins)
        lead = self.ndim - len(shape)
        ashape, cs = self.shape, self.chunks
        box = (*ashape[:lead], *shape)
        pieces: list[tuple[tuple, tuple, tuple]] = []
        for b, org in enumerate(origins.tolist()):
            org = [0] * lead + org
            lo = [max(o, 0) for o in org]
            hi = [min(o + s, n) for o, s, n in zip(org, box, ashape)]
            if any(h <= lo_ for lo_, h in zip(lo, hi)):
                out[b] = pad
                continue
            _pad_outside(out[b], org, lo, hi, pad)
            if not self._raw:
                STATS["bytes_mapped"] += math.prod(h - l_ for l_, h in zip(lo, hi)) * out.itemsize
            per_axis = []
            for a in range(self.ndim):
                c, ks = cs[a], []
                for k in range(lo[a] // c, (hi[a] - 1) // c + 1):
                    s0, s1 = max(lo[a], k * c), min(hi[a], (k + 1) * c)
                    ks.append((k, slice(s0 - k * c, s1 - k * c), slice(s0 - org[a], s1 - org[a])))
                per_axis.append(ks)
            for combo in itertools.product(*per_axis):
                key, src, dst = zip(*combo)
                pieces.append((key, src, (b, *dst)))
        if len(origins) > 1:
            pieces.sort(key=_first)  # stable: all pieces of one chunk together, file order
        self._will_read(pieces)
        current, chunk = None, None
        for key, src, dst in pieces:
            if key != current:
                current, chunk = key, self._chunk(key)
            out[dst] = self.fill_value if chunk is None else chunk[src]

    def _will_read(self, pieces: list[tuple[tuple, tuple, tuple]]) -> None:
        """Called with a read's (chunk, source, destination) pieces before any chunk is
        read; local files need nothing (the remote reader fetches them all at once)."""

    def scan(self) -> Iterator[tuple[tuple[int, ...], str | None]]:
        """Read, verify and decode every stored chunk: (grid index, None or its error line).

        For ``pgps-inspect --verify``: checksums are verified whatever ``verify`` says;
        chunks never written (all fill) are skipped; a shard whose index is bad gives one
        error (under the shard's index) and its chunks are skipped.
        """
        if self.shard is None:
            grid = [math.ceil(n / c) for n, c in zip(self.shape, self.chunks)]
            shards = [((), itertools.product(*map(range, grid)))]
        else:
            grid = [math.ceil(n / s) for n, s in zip(self.shape, self.shard)]
            shards = (
                (sk, itertools.product(*(range(i * p, (i + 1) * p)
                                         for i, p in zip(sk, self._per_shard))))
                for sk in itertools.product(*map(range, grid))
            )
        for sk, keys in shards:
            if sk:
                try:
                    self._indices[sk] = self._read_index(sk)
                    if self._indices[sk] is None:
                        continue
                except PGPSInputError as exc:
                    yield sk, str(exc)
                    continue
            for k in keys:
                if any(i * c >= n for i, c, n in zip(k, self.chunks, self.shape)):
                    continue  # an inner chunk of an edge shard past the array's end
                try:
                    if self._chunk(k, verify="always") is not None:
                        yield k, None
                except PGPSInputError as exc:
                    yield k, str(exc)

    # ------------------------------------------------------------------------ chunk access
    def _chunk(self, k: tuple[int, ...], verify: str | None = None) -> np.ndarray | None:
        """One decoded chunk (a view into scratch or into a mapped file), or None = fill.

        A chunk that fails its checksum, has the wrong size or does not decode raises one
        line naming the array and the chunk ``k``.
        """
        loc = self._where.get(k, False)
        if loc is False:
            loc = self._where[k] = self._locate(k)
        if loc is None:
            return None
        path, offset, nbytes = loc
        STATS["chunks"] += 1
        verify = verify or self.verify
        check = self.checksum and verify != "off"
        if check and verify == "once" and FILES.verified(path, offset):
            check = False
        if not self._raw:  # uncompressed: a view of the mapped file, no copy, no decode
            want = self._chunk_nbytes + 4 * self.checksum
            if nbytes != want:
                raise self._bad(k, f"has {nbytes} bytes, expected {want}")
            if check:
                raw = FILES.view(path, offset, np.uint8, (nbytes,))
                if raw is None:  # the file vanished since it was located
                    return None
                if not crc_matches(raw):
                    raise self._bad(k)
                FILES.set_verified(path, offset)
            return FILES.view(path, offset, self._stored, self.chunks)
        data = FILES.view(path, offset, np.uint8, (nbytes,))
        if data is None:
            return None
        try:
            self._decode(data, check)
        except _Corrupt:
            raise self._bad(k) from None
        except (RuntimeError, ValueError, TypeError) as exc:  # numcodecs on damaged bytes
            raise self._bad(k, f"cannot be decoded ({type(exc).__name__}: {exc})") from None
        if check:
            FILES.set_verified(path, offset)
        STATS["bytes_decoded"] += self._chunk_nbytes
        return self._scratch

    def _bad(self, k: tuple[int, ...], problem: str = "fails its crc32c checksum"):
        return corrupt_chunk(self.where, k, self.shape, self.chunks, problem)

    def _decode(self, data: np.ndarray, check: bool) -> None:
        """Undo the bytes-to-bytes codecs, last one straight into the scratch chunk.

        ``check``: verify each crc32c (raise :class:`_Corrupt`); else just strip it.
        """
        dest = self._scratch
        for i, dec in enumerate(reversed(self._decoders)):
            last = i == len(self._decoders) - 1
            if dec == "crc32c":
                buf = data if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
                if len(buf) < 4 or (check and not crc_matches(buf)):
                    raise _Corrupt
                data = data[:-4]
                if last:
                    if len(data) != dest.nbytes:
                        raise ValueError(f"{len(data)} bytes, expected {dest.nbytes}")
                    dest.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, np.uint8)
            elif dec == "blosc":
                data = numcodecs.blosc.decompress(data, dest if last else None)
            elif dec == "zstd":
                data = numcodecs.zstd.decompress(data, dest if last else None)

    def _locate(self, k: tuple[int, ...]) -> tuple[str, int, int] | None:
        """(file, byte offset, nbytes or -1 for the whole file) of chunk ``k``; None = fill."""
        if self.shard is None:
            path = f"{self.root}/{self._key(k)}"
            FILES.revalidate(path)  # this reader's first use of the file: is it still the same?
            size = FILES.size(path)
            if size is None:
                self._check_present()
                return None
            return path, 0, size
        per = self._per_shard
        sk = tuple(i // p for i, p in zip(k, per))
        index = self._indices.get(sk, False)
        if index is False:
            index = self._indices[sk] = self._read_index(sk)
        if index is None:
            return None
        flat = 0
        for i, p in zip(k, per):
            flat = flat * p + i % p
        offset, nbytes = index[flat]
        if offset == _MISSING:
            return None
        return f"{self.root}/{self._key(sk)}", offset, nbytes

    def _check_present(self) -> None:
        """A chunk file is absent: fine (all fill), unless the whole array has vanished."""
        if not os.path.exists(f"{self.root}/zarr.json"):
            raise PGPSInputError(_GONE, path=self.root)

    def _read_index(self, sk: tuple[int, ...]) -> list[tuple[int, int]] | None:
        """Shard ``sk``'s (offset, nbytes) per inner chunk in C order; None if no file."""
        path = f"{self.root}/{self._key(sk)}"
        n = math.prod(self._per_shard)
        size = 16 * n + (4 if self._index_crc else 0)
        FILES.revalidate(path)  # this reader's first use of the file: is it still the same?
        file_size = FILES.size(path)
        if file_size is None:
            self._check_present()
            return None
        if file_size < size:
            raise corrupt_chunk(self.where, sk, self.shape, self.shard, "is truncated", "shard")
        raw = FILES.view(path, 0 if self._index_start else file_size - size, np.uint8, (size,))
        return self._parse_index(sk, raw)

    def _parse_index(self, sk: tuple[int, ...], raw: np.ndarray) -> list[tuple[int, int]]:
        """Shard ``sk``'s index bytes as (offset, nbytes) per inner chunk; a bad crc32c is
        one line naming the shard."""
        n = math.prod(self._per_shard)
        if self._index_crc and not crc_matches(raw):
            raise corrupt_chunk(
                self.where, sk, self.shape, self.shard, "index fails its crc32c checksum", "shard"
            )
        idx = raw[: 16 * n].view(">u8" if self._index_be else "<u8")
        return [tuple(p) for p in idx.reshape(n, 2).tolist()]


# ------------------------------------------------------------------------------- helpers
class _Corrupt(Exception):
    """A chunk's crc32c does not match (turned into one line naming the chunk)."""


def _first(piece: tuple) -> tuple:
    return piece[0]


def _pad_outside(out: np.ndarray, org: list, lo: list, hi: list, pad) -> None:
    """Fill the slabs of ``out`` that lie outside the array (only those voxels)."""
    for a in range(out.ndim):
        before, after = lo[a] - org[a], hi[a] - org[a]
        if before > 0:
            out[(slice(None),) * a + (slice(0, before),)] = pad
        if after < out.shape[a]:
            out[(slice(None),) * a + (slice(after, None),)] = pad
