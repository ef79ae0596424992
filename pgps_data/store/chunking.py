"""How the store lays its arrays out on disk: chunks, shards, codec and image dtype.

The layout serves the loader's hot path (:mod:`pgps_data.store.fastread`): random crops
from 32³ up to ~128³ voxels, single boxes or groups of many small boxes from one case.
The defaults were chosen with ``tools/bench_read.py`` (CT-like 160×320×320 volume):

- Image: ``(C, Z, Y, X)`` float32 with every channel in one chunk (a crop always reads
  all channels, so one decode serves them all), inner chunks of 32³ voxels inside 128³
  shards: one file per 128³ block keeps the file count low; 32³ inner chunks keep the
  bytes decoded per crop low (16³ chunks cost more per-chunk overhead than they save,
  64³ chunks decode 3-4x the bytes a 32³-64³ crop needs).
- Codec "default": blosc lz4 *without* shuffle. On noisy tissue shuffle buys ~5 % of disk
  but makes decoding 1.5-2x slower; zstd decodes ~5x slower; float16 halves the bytes
  but its cast back to float32 costs what it saves (and loses precision).
- Codec "none": uncompressed, sliced straight from a memory map (amplification 1).
- The image fill value is the background (see :func:`write_array`): background chunks are
  never written, never decoded, and cost no disk.
- Labels: uint8, the same chunking; foreground indices: one (N, 3) int32 chunk.
- Checksum: every chunk of every array (image, label, indices; any codec, "none"
  included) ends in a crc32c of its stored bytes (zarr's ``crc32c`` codec after the
  compressor, inside the sharding codec's inner chain), so a flipped bit on disk is
  reported by every reader instead of being served as wrong voxels. Stores written
  before (``Layout(checksum=False)``) still open and read; they just are not verified.

Every array is written with zarr-python's own ``create_array`` (fill value 0, empty
chunks skipped), so the store stays plain zarr v3 that any zarr tool opens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from pgps_data.errors import PGPSInputError

__all__ = ["CODECS", "LAYOUTS", "Layout", "check_codec", "layout_attrs", "write_array"]


@dataclass(frozen=True)
class Layout:
    """One on-disk layout: spatial inner chunk, spatial shard (None = unsharded), codec."""

    chunk: tuple[int, int, int] = (32, 32, 32)
    shard: tuple[int, int, int] | None = (128, 128, 128)
    compressor: str = "lz4"  # blosc "lz4" / "zstd" / "blosclz", "zstd-plain", or "none"
    clevel: int = 5
    shuffle: str = "noshuffle"  # blosc's filter: "shuffle", "noshuffle" or "bitshuffle"
    image_dtype: str = "float32"
    checksum: bool = True  # a crc32c after the compressor on every chunk (False: old stores)

    def compressors(self, dtype: np.dtype) -> list:
        """zarr-python bytes-to-bytes codecs for an array of ``dtype``: compressor, crc32c."""
        crc = [Crc32cCodec()] if self.checksum else []
        if self.compressor == "none":
            return crc
        shuffle = self.shuffle if np.dtype(dtype).itemsize > 1 else "noshuffle"
        if self.compressor in ("lz4", "zstd", "blosclz"):
            return [BloscCodec(cname=self.compressor, clevel=self.clevel, shuffle=shuffle), *crc]
        if self.compressor == "zstd-plain":
            return [ZstdCodec(level=self.clevel), *crc]
        raise ValueError(f"unknown compressor {self.compressor!r}")


#: The named layouts a store can be written with; their names are ``--codec``'s choices.
LAYOUTS: dict[str, Layout] = {
    "default": Layout(),
    "none": Layout(compressor="none"),
}
CODECS = tuple(LAYOUTS)
_KINDS = ("image", "label", "index")


def write_array(
    group: zarr.Group,
    name: str,
    data: np.ndarray,
    *,
    kind: str,
    codec: str = "default",
    layout: Layout | None = None,
    overwrite: bool = True,
    fill_value: float | str = "auto",
) -> zarr.Array:
    """Write ``data`` as ``group[name]`` with the store's layout and return the array.

    ``kind`` is "image" ((C, Z, Y, X), stored as the layout's image dtype), "label"
    ((Z, Y, X) uint8) or "index" ((N, 3) int32 voxel coordinates). ``codec`` names one of
    :data:`LAYOUTS`; ``layout`` overrides it (benchmarks).

    Chunks equal to the fill value everywhere are not written (zarr's default) and read
    back as the fill value. Labels and indices use 0. For images, ``fill_value="auto"``
    picks the background: the array's minimum when it is more frequent than 0 (clipped
    air in z-scored CT, background in MRI), else 0, so background chunks cost neither
    disk nor decode time.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    lay = layout or _layout(codec)
    data = np.asarray(data)
    fill = 0
    if kind == "index":
        if data.ndim != 2 or data.shape[1] != 3:
            raise ValueError(f"an index must be (N, 3), got {data.shape}")
        data = data.astype(np.int32, copy=False)
        chunks, shards = (max(1, min(len(data), 1 << 20)), 3), None
    else:
        want = 4 if kind == "image" else 3
        if data.ndim != want:
            raise ValueError(f"a {kind} must have {want} axes, got shape {data.shape}")
        if kind == "label":
            data = _as_uint8(data, name)
        else:
            data = data.astype(lay.image_dtype, copy=False)
            fill = _background(data) if fill_value == "auto" else float(fill_value)
        chunks, shards = _chunking(data.shape, lay)
    arr = group.create_array(
        name,
        shape=data.shape,
        dtype=data.dtype,
        chunks=chunks,
        shards=shards,
        compressors=lay.compressors(data.dtype),
        fill_value=fill,
        overwrite=overwrite,
    )
    if data.size:
        arr[...] = data
    return arr


def layout_attrs(codec: str = "default", layout: Layout | None = None) -> dict:
    """JSON-ready description of the layout, recorded in the store's attributes."""
    lay = layout or _layout(codec)
    return {
        "codec": codec if layout is None else "custom",
        "compressor": (
            "none"
            if lay.compressor == "none"
            else f"blosc-{lay.compressor}-{lay.shuffle}-{lay.clevel}"
        ),
        "checksum": "crc32c" if lay.checksum else None,
        "chunk": list(lay.chunk),
        "shard": None if lay.shard is None else list(lay.shard),
        "channel_chunk": "all",
        "image_dtype": lay.image_dtype,
        "label_dtype": "uint8",
        "index_dtype": "int32",
        "fill_value": "image: background (the minimum when commoner than 0); others: 0",
    }


def check_codec(codec: str) -> str:
    """``codec`` if it names one of :data:`LAYOUTS`; else one line naming the choices."""
    if codec not in LAYOUTS:
        raise PGPSInputError(f"unknown codec {codec!r} (use one of: {', '.join(CODECS)})")
    return codec


def _layout(codec: str) -> Layout:
    return LAYOUTS[check_codec(codec)]


def _chunking(shape: tuple[int, ...], lay: Layout) -> tuple[tuple, tuple | None]:
    """Chunk and shard shapes for an image or label of ``shape``, fitted to small arrays.

    Chunks never exceed the array (a 20-slice case gets 20-slice chunks), and shards never
    exceed the array rounded up to whole chunks, so small cases get one small shard.
    """
    lead = tuple(shape[:-3])  # channels: all in one chunk
    spatial = shape[-3:]
    chunk = tuple(max(1, min(c, n)) for c, n in zip(lay.chunk, spatial))
    if lay.shard is None:
        return lead + chunk, None
    shard = tuple(
        max(c, min(s // c * c, math.ceil(n / c) * c)) for c, s, n in zip(chunk, lay.shard, spatial)
    )
    if shard == chunk:
        return lead + chunk, None  # one chunk per shard: sharding adds only an index
    return lead + chunk, lead + shard


def _background(data: np.ndarray) -> float:
    """The commoner of 0 and the minimum (the value background and air clip to)."""
    if not data.size:
        return 0.0
    low = data.min()
    return float(low) if np.count_nonzero(data == low) > np.count_nonzero(data == 0) else 0.0


def _as_uint8(data: np.ndarray, name: str) -> np.ndarray:
    if data.dtype == np.uint8:
        return data
    if data.size and (data.min() < 0 or data.max() > 255 or not np.all(data == np.round(data))):
        raise PGPSInputError(
            f"label {name!r} has values outside 0..255 integers (relabel to uint8 classes)"
        )
    return data.astype(np.uint8)
