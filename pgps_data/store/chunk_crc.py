"""Chunk checksums: the one-line corruption error, and zarr-python reads that raise it.

:func:`read_box_zarr` is the reference/fallback box read of the store (re-exported by
:mod:`pgps_data.store.fastread`).

Every chunk the store writes ends in a crc32c of its stored bytes (:mod:`pgps_data.store.chunking`).
Both readers verify it: the fast reader (:mod:`pgps_data.store.fastread`) itself, and
zarr-python (the fallback, and the foreground index arrays) through its ``crc32c`` codec,
which raises a bare ``ValueError`` naming neither the array nor the chunk.
:func:`read_checked` turns that into the same single line the fast reader gives::

    <store>/cases/<id>/image: chunk (z, y, x) fails its crc32c checksum (the store is
    corrupt: pgps-inspect STORE --verify lists every bad chunk; ...)

Chunks are named by their index in the array's (inner) chunk grid; the channel axis of an
image, always one chunk, is left out.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import zarr

from pgps_data.errors import PGPSInputError

__all__ = [
    "CORRUPT_HINT",
    "array_path",
    "chunk_label",
    "corrupt_chunk",
    "crc_matches",
    "read_box_zarr",
    "read_checked",
    "zarr_chunk_error",
]

CORRUPT_HINT = (
    "the store is corrupt: pgps-inspect STORE --verify lists every bad chunk; re-convert with "
    "pgps-convert --overwrite or restore the store"
)


def crc_matches(data: np.ndarray) -> bool:
    """Whether the last 4 bytes of ``data`` (uint8, contiguous) are the crc32c of the rest."""
    import google_crc32c

    return google_crc32c.value(data[:-4]) == int.from_bytes(data[-4:].tobytes(), "little")


def chunk_label(key: Sequence[int], shape: Sequence[int], chunks: Sequence[int]) -> str:
    """``(z, y, x)``: the chunk's grid index, without leading axes held in one chunk."""
    key = [int(k) for k in key]
    drop = 0
    while len(key) - drop > 3 and chunks[drop] >= shape[drop]:
        drop += 1
    return "(" + ", ".join(map(str, key[drop:])) + ")"


def corrupt_chunk(
    path: object,
    key: Sequence[int],
    shape: Sequence[int],
    chunks: Sequence[int],
    problem: str = "fails its crc32c checksum",
    what: str = "chunk",
) -> PGPSInputError:
    """The one-line error for a bad chunk (or shard index) ``key`` of the array at ``path``."""
    return PGPSInputError(
        f"{what} {chunk_label(key, shape, chunks)} {problem} ({CORRUPT_HINT})", path=path
    )


def array_path(arr: zarr.Array) -> str:
    """Where ``arr`` lives, for messages: ``<store>/cases/<id>/image`` on a local store."""
    store = arr.store
    root = getattr(store, "root", None)
    return f"{root}/{arr.path}" if root is not None else f"{store}/{arr.path}"


def zarr_chunk_error(arr: zarr.Array, key: Sequence[int], exc: Exception) -> PGPSInputError:
    """The one-line error for chunk ``key`` that zarr-python failed to read with ``exc``."""
    problem = (
        "fails its crc32c checksum"
        if "checksum" in str(exc).lower()
        else f"cannot be decoded ({type(exc).__name__}: {exc})"
    )
    return corrupt_chunk(array_path(arr), key, arr.shape, arr.chunks, problem)


def read_checked(arr: zarr.Array, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """``arr[lo:hi]`` by zarr-python; a chunk that fails its checksum raises one line.

    On a failure the chunks of the region are re-read one by one to name the bad one
    (costs nothing on the normal path). An error no single chunk reproduces (not
    corruption) is raised unchanged.
    """
    region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    try:
        return arr[region]
    except (ValueError, RuntimeError, TypeError) as exc:
        bad = first_bad_chunk(arr, lo, hi)
        if bad is None:
            raise
        raise zarr_chunk_error(arr, *bad) from exc


def first_bad_chunk(
    arr: zarr.Array, lo: Sequence[int], hi: Sequence[int]
) -> tuple[tuple[int, ...], Exception] | None:
    """(grid index, error) of the first chunk in ``lo:hi`` that zarr-python cannot read."""
    cs = arr.chunks
    ranges = [range(int(a) // c, (int(b) - 1) // c + 1) for a, b, c in zip(lo, hi, cs)]
    for key in itertools.product(*ranges):
        try:
            arr[tuple(slice(k * c, min((k + 1) * c, n)) for k, c, n in zip(key, cs, arr.shape))]
        except (ValueError, RuntimeError, TypeError) as exc:
            return key, exc
    return None


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
        out[dst] = read_checked(arr, lo, hi)  # a bad chunk: one line, not zarr's ValueError
    return out
