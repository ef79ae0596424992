"""Fast, synchronous crop reads from zarr v3 arrays on a local disk.

zarr-python spends most of a small crop's time in its own machinery (event loop, one
coroutine per chunk, the shard index re-read per request; notes/zarr_reads.md). The
training loader reads thousands of small boxes per second, so this module reads the very
same files itself: it parses ``zarr.json``, caches each shard's index once, reads the
inner chunks from a cached read-only map of the shard file and decodes them with numcodecs
(single-threaded) into a scratch chunk; uncompressed chunks are sliced straight out of the
map without any decode. The store stays plain zarr v3; zarr-python remains the
reference and the fallback (:func:`read_box_zarr`) for anything this reader does not know
(:meth:`FastArray.open` then returns ``None``).

Boxes are given by an origin (may be negative) and a shape (may exceed the array): voxels
outside the array get ``pad_value``; chunks inside the array that were never written
(zarr skips all-fill chunks) read as the array's fill value.
"""

from __future__ import annotations

import itertools
import json
import math
import mmap
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numcodecs.blosc
import numcodecs.zstd
import numpy as np
import zarr

from pgps_data.errors import PGPSInputError
from pgps_data.zarr_meta import parse_meta as _parse_meta

__all__ = ["STATS", "FastArray", "read_box", "read_box_zarr"]

#: Process-wide counters (tests use them to prove the fast path ran; benches for amplification).
STATS: dict[str, int] = {"reads": 0, "boxes": 0, "chunks": 0, "bytes_decoded": 0, "bytes_mapped": 0}

_MISSING = 2**64 - 1
_MAX_OPEN = int(os.environ.get("PGPS_FASTREAD_OPEN_FILES", "128"))
# Workers run many readers in parallel: decode on the calling thread only, never blosc's pool.
numcodecs.blosc.use_threads = False


class FastArray:
    """A zarr v3 array on local disk, opened for fast box reads (see module docstring)."""

    def __init__(self, root: Path, meta: dict):
        self.root = root
        self.shape: tuple[int, ...] = meta["shape"]
        self.dtype: np.dtype = meta["dtype"].newbyteorder("=")
        self.fill_value = meta["fill_value"]
        self.chunks: tuple[int, ...] = meta["chunks"]  # the read unit (inner chunk if sharded)
        self.shard: tuple[int, ...] | None = meta["shard"]
        self._stored = meta["dtype"]
        self._decoders: list[str] = meta["decoders"]
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
    def open(cls, arr: zarr.Array) -> FastArray | None:
        """Open ``arr`` for the fast path, or return ``None`` to fall back to zarr-python.

        ``None`` means: not on a local filesystem store, or a layout this reader does not
        implement (codecs other than bytes/blosc/zstd/crc32c, transposes, nested shards,
        irregular grids, storage transformers, unusual dtypes or fill values).
        """
        store = arr.store
        if not isinstance(store, zarr.storage.LocalStore) or arr.metadata.zarr_format != 3:
            return None
        root = Path(store.root) / arr.path
        try:
            meta = _parse_meta(json.loads((root / "zarr.json").read_text()))
        except (OSError, ValueError):
            return None
        return None if meta is None else cls(root, meta)

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
            if not self._decoders:
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
        current, chunk = None, None
        for key, src, dst in pieces:
            if key != current:
                current, chunk = key, self._chunk(key)
            out[dst] = self.fill_value if chunk is None else chunk[src]

    # ------------------------------------------------------------------------ chunk access
    def _chunk(self, k: tuple[int, ...]) -> np.ndarray | None:
        """One decoded chunk (a view into scratch or into a mapped file), or None = fill."""
        loc = self._where.get(k, False)
        if loc is False:
            loc = self._where[k] = self._locate(k)
        if loc is None:
            return None
        path, offset, nbytes = loc
        STATS["chunks"] += 1
        if not self._decoders:  # uncompressed: a view of the mapped file, no copy, no decode
            return _FILES.view(path, offset, self._stored, self.chunks)
        data = _FILES.view(path, offset, np.uint8, (nbytes,))
        if data is None:
            return None
        self._decode(data)
        STATS["bytes_decoded"] += self._chunk_nbytes
        return self._scratch

    def _decode(self, data: np.ndarray | bytes) -> None:
        """Undo the bytes-to-bytes codecs, last one straight into the scratch chunk."""
        dest = self._scratch
        for i, dec in enumerate(reversed(self._decoders)):
            last = i == len(self._decoders) - 1
            if dec == "crc32c":
                data = data[:-4]
                if last:
                    dest.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, np.uint8)
            elif dec == "blosc":
                data = numcodecs.blosc.decompress(data, dest if last else None)
            elif dec == "zstd":
                data = numcodecs.zstd.decompress(data, dest if last else None)

    def _locate(self, k: tuple[int, ...]) -> tuple[str, int, int] | None:
        """(file, byte offset, nbytes or -1 for the whole file) of chunk ``k``; None = fill."""
        if self.shard is None:
            path = f"{self.root}/{self._key(k)}"
            size = _FILES.size(path)
            return None if size is None else (path, 0, size)
        per = self._per_shard
        sk = tuple(i // p for i, p in zip(k, per))
        index = self._indices.get(sk, False)
        if index is False:
            index = self._indices[sk] = self._read_index(f"{self.root}/{self._key(sk)}")
        if index is None:
            return None
        flat = 0
        for i, p in zip(k, per):
            flat = flat * p + i % p
        offset, nbytes = index[flat]
        if offset == _MISSING:
            return None
        return f"{self.root}/{self._key(sk)}", offset, nbytes

    def _read_index(self, path: str) -> list[tuple[int, int]] | None:
        """The shard's (offset, nbytes) per inner chunk in C order; None if no shard file."""
        n = math.prod(self._per_shard)
        size = 16 * n + (4 if self._index_crc else 0)
        file_size = _FILES.size(path)
        if file_size is None:
            return None
        raw = _FILES.view(path, 0 if self._index_start else file_size - size, np.uint8, (size,))
        if self._index_crc:
            import google_crc32c

            if google_crc32c.value(raw[:-4].tobytes()) != int.from_bytes(raw[-4:], "little"):
                raise PGPSInputError("shard index checksum mismatch (rewrite the case)", path=path)
        idx = raw[: 16 * n].view(">u8" if self._index_be else "<u8")
        return [tuple(p) for p in idx.reshape(n, 2).tolist()]


def read_box_zarr(
    arr: zarr.Array,
    origin: Sequence[int],
    shape: Sequence[int],
    pad_value: float = 0,
    dtype: np.dtype | type | None = None,
) -> np.ndarray:
    """The reference/fallback: the same box as :meth:`FastArray.read`, via zarr-python."""
    lead = arr.ndim - len(shape)
    org = [0] * lead + [int(o) for o in origin]
    box = [*arr.shape[:lead], *(int(s) for s in shape)]
    out = np.full(box, pad_value, dtype=dtype or arr.dtype)
    lo = [max(o, 0) for o in org]
    hi = [min(o + s, n) for o, s, n in zip(org, box, arr.shape)]
    if all(h > lo_ for lo_, h in zip(lo, hi)):
        dst = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, org))
        out[dst] = arr[tuple(slice(a, b) for a, b in zip(lo, hi))]
    return out


def read_box(
    arr: zarr.Array,
    origin: Sequence[int],
    shape: Sequence[int],
    pad_value: float = 0,
    dtype: np.dtype | type | None = None,
) -> np.ndarray:
    """Convenience: the fast path when :meth:`FastArray.open` accepts ``arr``, else zarr."""
    fast = FastArray.open(arr)
    if fast is None:
        return read_box_zarr(arr, origin, shape, pad_value, dtype)
    return fast.read(origin, shape, pad_value=pad_value, dtype=dtype)


# ------------------------------------------------------------------------------- helpers
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


class _OpenFiles:
    """Process-wide LRU of read-only file maps and views into them (fork-safe by pid).

    Every chunk, compressed or not, is read through a map: no syscall and no copy per
    chunk once a shard is mapped. Files must not be rewritten while a reader maps them.
    """

    def __init__(self, limit: int):
        self.limit, self.pid = limit, os.getpid()
        self.maps: OrderedDict[str, tuple[mmap.mmap, dict] | None] = OrderedDict()

    def _entry(self, path: str) -> tuple[mmap.mmap, dict] | None:
        if os.getpid() != self.pid:  # a forked worker: do not share the parent's entries
            self.pid, self.maps = os.getpid(), OrderedDict()
        if path in self.maps:
            self.maps.move_to_end(path)
            return self.maps[path]
        try:
            with open(path, "rb") as f:
                entry = (mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), {})
        except FileNotFoundError:
            entry = None
        except ValueError as e:  # an empty file cannot be mapped
            raise PGPSInputError(f"cannot map chunk file: {e} (rewrite the case)", path=path) from e
        self.maps[path] = entry
        if len(self.maps) > self.limit:
            self.maps.popitem(last=False)  # the map closes once its last view is gone
        return entry

    def size(self, path: str) -> int | None:
        entry = self._entry(path)
        return None if entry is None else len(entry[0])

    def view(self, path: str, offset: int, dtype, shape: tuple) -> np.ndarray | None:
        """An array view of ``path`` at ``offset`` (cached with the map); None if no file."""
        entry = self._entry(path)
        if entry is None:
            return None
        key = (offset, dtype, shape)
        arr = entry[1].get(key)
        if arr is None:
            count = math.prod(shape)
            if offset < 0 or offset + count * np.dtype(dtype).itemsize > len(entry[0]):
                raise PGPSInputError("chunk file is truncated (rewrite the case)", path=path)
            arr = entry[1][key] = np.frombuffer(entry[0], dtype, count, offset).reshape(shape)
        return arr


_FILES = _OpenFiles(_MAX_OPEN)
