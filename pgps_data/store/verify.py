"""Read every chunk of a store and check it: what ``pgps-inspect --verify`` runs.

Every array of every case (image, label, foreground indices) is read chunk by chunk, by
the fast reader where it can (:meth:`pgps_data.store.fastread.FastArray.scan`: every crc32c
is verified whatever the reader's ``verify`` policy, and every chunk decoded), else by
zarr-python one chunk at a time. Each bad chunk gives one line naming store, case, array
and chunk; cases marked complete whose arrays are gone give one line each; a case whose
chunks all pass is then read whole and compared with the content checksum its writer
recorded (a deleted chunk file reads as fill and has no crc to fail). Arrays of older
stores, written without checksums, can only be decoded; they are counted as unverified.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import zarr

from pgps_data.errors import PGPSInputError
from pgps_data.store.chunk_crc import zarr_chunk_error
from pgps_data.store.remote import reader_for
from pgps_data.store.store import Store
from pgps_data.store.write import content_checksum

__all__ = ["VerifyResult", "array_count", "verify_store"]


@dataclass
class VerifyResult:
    """What :func:`verify_store` found; ``ok`` when nothing is bad."""

    cases: int = 0
    arrays: int = 0
    chunks: int = 0  # stored chunks read (chunks never written are all fill: nothing to read)
    bad: list[str] = field(default_factory=list)  # one line per bad chunk or missing array
    unverified: list[str] = field(default_factory=list)  # arrays that carry no checksum

    @property
    def ok(self) -> bool:
        return not self.bad

    def summary(self) -> str:
        """One line: what was read and what was found."""
        line = (
            f"verified {self.chunks} chunks in {self.arrays} arrays of {self.cases} cases: "
            + ("all good" if self.ok else f"{len(self.bad)} bad")
        )
        if self.unverified:
            line += (
                f"; {len(self.unverified)} arrays carry no checksum (written before pgps "
                "stored checksums: decoded only; re-convert to protect them)"
            )
        return line

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "cases": self.cases,
            "arrays": self.arrays,
            "chunks": self.chunks,
            "bad": self.bad,
            "unverified": self.unverified,
        }


def array_count(store: Store) -> int:
    """How many arrays :func:`verify_store` reads (for a progress bar)."""
    return sum(len(_names(store, cid)) for cid in store.case_ids + store.test_ids)


def verify_store(
    store: Store,
    advance: Callable[[int], None] | None = None,
    on_bad: Callable[[str], None] | None = None,
) -> VerifyResult:
    """Read and check every chunk of ``store``; ``advance(1)`` after each array,
    ``on_bad(line)`` for each bad chunk as it is found (both optional)."""
    result = VerifyResult()

    def bad(line: str) -> None:
        result.bad.append(line)
        if on_bad is not None:
            on_bad(line)

    for line in store.broken_cases.values():
        bad(line)
    result.cases = len(store.broken_cases)
    for cid in store.case_ids + store.test_ids:
        result.cases += 1
        names = _names(store, cid)
        try:
            case = store[cid]
        except PGPSInputError as exc:  # the case or an array vanished since the store opened
            bad(str(exc))
            if advance is not None:
                advance(len(names))
            continue
        case_bad = False
        for name in names:
            try:
                checked, lines, has_crc = _scan(case.group[name])
            except KeyError:
                checked, lines, has_crc = 0, [_missing(case.where, name)], True
            except PGPSInputError as exc:  # e.g. the array vanished while we read it
                checked, lines, has_crc = 0, [str(exc)], True
            result.arrays += 1
            result.chunks += checked
            for line in lines:
                bad(line)
            case_bad = case_bad or bool(lines)
            if not has_crc:
                result.unverified.append(f"{case.where}/{name}")
            if advance is not None:
                advance(1)
        if not case_bad and case.meta.get("checksum"):
            line = _content_mismatch(case, names)
            if line is not None:
                bad(line)
    return result


def _content_mismatch(case, names: list[str]) -> str | None:  # noqa: ANN001
    """One line when the case's arrays, read whole, differ from the content checksum the
    writer recorded: what per-chunk crcs cannot see (a chunk or shard file deleted reads
    as fill, a shard swapped with another case's)."""
    try:
        arrays = [(name, case.group[name][...]) for name in names]
    except (KeyError, ValueError, RuntimeError, PGPSInputError) as exc:
        return f"{case.where}: cannot be read whole for its content checksum ({exc})"
    if content_checksum(arrays) != case.meta["checksum"]:
        return (f"{case.where}: content differs from its recorded checksum (a chunk or shard "
                "file is missing or was replaced); re-convert with pgps-convert --overwrite "
                "or restore the store")
    return None


def _names(store: Store, cid: str) -> list[str]:
    """The arrays of case ``cid``, from the attributes read when the store was opened."""
    label = [] if cid in store.test_ids else ["label"]
    return ["image", *label, *store.case_attrs(cid).get("index_arrays", [])]


def _scan(arr: zarr.Array) -> tuple[int, list[str], bool]:
    """(stored chunks read, error lines, whether the array carries a crc32c)."""
    fast = reader_for(arr)
    if fast is not None:
        n, lines = 0, []
        for _, err in fast.scan():
            n += 1
            if err is not None:
                lines.append(err)
        return n, lines, fast.checksum
    n, lines = 0, []
    for key, err in _scan_zarr(arr):
        n += 1
        if err is not None:
            lines.append(str(zarr_chunk_error(arr, key, err)))
    return n, lines, "crc32c" in json.dumps(arr.metadata.to_dict())


def _scan_zarr(arr: zarr.Array) -> Iterator[tuple[tuple[int, ...], Exception | None]]:
    """Every chunk of ``arr`` read by zarr-python: (grid index, None or the error)."""
    cs = arr.chunks
    grid = [math.ceil(n / c) for n, c in zip(arr.shape, cs)]
    for key in itertools.product(*map(range, grid)):
        region = tuple(slice(k * c, min((k + 1) * c, n)) for k, c, n in zip(key, cs, arr.shape))
        try:
            arr[region]
        except (ValueError, RuntimeError, TypeError) as exc:
            yield key, exc
        else:
            yield key, None


def _missing(where: str, name: str) -> str:
    return str(
        PGPSInputError(
            "array is missing (re-convert the case with pgps-convert or restore it)",
            path=f"{where}/{name}",
        )
    )
