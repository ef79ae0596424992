"""The pgps zarr v3 store: open it, list its cases, read crops fast.

A store is a plain zarr v3 group (any zarr tool opens it)::

    <name>.zarr/                 attrs: format, labels, ignore label, channels, spacing, ...
      cases/<case_id>/image      (C, Z, Y, X) normalised intensities
      cases/<case_id>/label      (Z, Y, X) uint8
      cases/<case_id>/fg_<v>     (N, 3) int32 voxel coordinates of label value v
      cases/<case_id>/annotated  (N, 3) int32 non-ignore voxels (only with an ignore label)
      test/<case_id>/image       unlabelled cases (imagesTs): never listed as training cases

A case is listed only once its ``complete`` attribute has been written, which the writer
(:mod:`pgps_data.store.write`) does last, and while all its arrays exist: a case whose
array was deleted is not listed, so the store is not :attr:`Store.complete`.
``case.read`` is the loader's hot path: it reads the chunk bytes of local stores itself
(:mod:`pgps_data.store.fastread`) and falls back to zarr-python for stores that path cannot
read (remote ones). Both verify every chunk's crc32c (:mod:`pgps_data.store.chunk_crc`): a
corrupt chunk is one :class:`PGPSInputError` line naming case, array and chunk, never
wrong voxels.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pgps_data.errors import PGPSInputError
from pgps_data.store.chunk_crc import read_checked
from pgps_data.store.completeness import CASE_INDEX, is_complete, remote_cases, scan_cases
from pgps_data.store.fastread import FastArray, read_box_zarr
from pgps_data.store.remote import local_path, open_remote, reader_for

FORMAT_VERSION = 1
CASE_CACHE = 64  # opened cases kept per process (metadata, readers, foreground indices);
# the one cache of cases: the loader's workers read through it too
TRAIN_GROUP = "cases"
TEST_GROUP = "test"


def open_store(path: str | os.PathLike) -> Store:
    """Open a pgps store read-only; one clear error line if it is missing or not a store.

    ``path`` is a local path, or an fsspec URL (``s3://``, ``gs://``, ``http(s)://``;
    ``file://`` is a local path) of a store uploaded with ``pgps-upload``
    (:mod:`pgps_data.store.remote`).
    """
    local = local_path(path)
    if local is None:
        url = str(path).rstrip("/")
        root = open_remote(url)
        return Store(url, root, _checked_attrs(url, dict(root.attrs)))
    path = local
    if not path.exists():
        raise PGPSInputError(f"{path}: no such store (run pgps-convert RAW_DIR {path} first)")
    try:
        root = zarr.open_group(str(path), mode="r")
        attrs = dict(root.attrs)
    except Exception as exc:  # zarr raises many types for a folder that is not a store
        raise PGPSInputError(
            f"{path}: not a readable zarr v3 store ({type(exc).__name__}: {exc})"
        ) from None
    return Store(path, root, _checked_attrs(path, attrs))


def _checked_attrs(path: object, attrs: dict[str, Any]) -> dict[str, Any]:
    """``attrs`` if they are a pgps root's this pgps can read, else one line."""
    if attrs.get("format") != "pgps" or "format_version" not in attrs:
        raise PGPSInputError(f"{path}: a zarr group but not a pgps store (made by pgps-convert?)")
    if attrs["format_version"] > FORMAT_VERSION:
        raise PGPSInputError(
            f"{path}: store format {attrs['format_version']} is newer than this pgps "
            f"({FORMAT_VERSION}); upgrade pgps"
        )
    return attrs


class NoSuchCase(PGPSInputError, KeyError):
    """A case id the store does not list as complete (one line; also a ``KeyError``)."""

    __str__ = Exception.__str__  # KeyError's would quote the message


class Store:
    """An opened store: dataset metadata and its complete cases.

    ``case_ids`` are the complete training cases, sorted; ``test_ids`` the unlabelled
    (imagesTs) cases, kept apart so they can never enter training. :attr:`complete`,
    :attr:`missing_cases` and :attr:`identity` say whether the conversion finished and
    which store (and case contents) a training run was started on.
    """

    def __init__(self, path: Path | str, root: zarr.Group, attrs: dict[str, Any]):
        self.path = path  # a Path, or the URL (a str) of a remote store
        self.root = root
        self.meta: dict[str, Any] = {k: v for k, v in attrs.items() if k != CASE_INDEX}
        if self.remote:
            train, test = remote_cases(path, root, attrs, TRAIN_GROUP, TEST_GROUP)  # type: ignore[arg-type]
            self._broken: dict[str, tuple[str, str]] = {}
        else:
            train, self._broken = scan_cases(path, root, TRAIN_GROUP, labelled=True)  # type: ignore[arg-type]
            test, broken_test = scan_cases(path, root, TEST_GROUP, labelled=False)  # type: ignore[arg-type]
            self._broken.update(broken_test)
        self._attrs = {**train, **test}  # each listed case's attributes, read while listing
        self.case_ids: list[str] = sorted(train)
        self.test_ids: list[str] = sorted(test)
        self._cases: OrderedDict[str, Case] = OrderedDict()  # LRU: memory stays flat

    @property
    def remote(self) -> bool:
        """Whether the store is read over the network (its :attr:`path` is a URL)."""
        return isinstance(self.path, str)

    @property
    def missing_cases(self) -> list[str]:
        """Ids in the root's ``training_cases`` that are not complete (not written, or an
        array missing)."""
        listed = set(self.case_ids)
        return [c for c in self.meta.get("training_cases", []) if c not in listed]

    @property
    def complete(self) -> bool:
        """The conversion finished (root ``complete``, written last) and no case is missing."""
        return is_complete(self.meta) and not self.missing_cases

    @property
    def identity(self) -> dict[str, Any]:
        """What a resumed run checks: the store's creation id and each case's checksum."""
        return {
            "creation_id": self.meta.get("creation_id"),
            "cases": {cid: self._attrs[cid].get("checksum") for cid in self.case_ids},
        }

    def case_attrs(self, case_id: str) -> dict[str, Any]:
        """A listed case's attributes as read when the store was opened (no array opened)."""
        if case_id not in self._attrs:
            raise self._no_case(case_id)
        return dict(self._attrs[case_id])

    @property
    def broken_cases(self) -> dict[str, str]:
        """Cases marked complete whose arrays are gone: {id: the one-line problem}."""
        return {cid: str(self._no_case(cid)) for cid in sorted(self._broken)}

    def __getitem__(self, case_id: str) -> Case:
        case = self._cases.get(case_id)
        if case is not None:
            self._cases.move_to_end(case_id)
        else:
            if case_id in self.case_ids:
                group = TRAIN_GROUP
            elif case_id in self.test_ids:
                group = TEST_GROUP
            else:
                raise self._no_case(case_id)
            where = f"{self.path}/{group}/{case_id}"
            try:
                node = self.root[f"{group}/{case_id}"]
            except KeyError:
                raise PGPSInputError(
                    "case is missing (deleted after the store was opened?) "
                    "(re-convert the case with pgps-convert or restore it)", path=where
                ) from None
            case = Case(case_id, node, group == TEST_GROUP, where=where)  # type: ignore[arg-type]
            self._cases[case_id] = case
            if len(self._cases) > CASE_CACHE:
                self._cases.popitem(last=False)
        return case

    def _no_case(self, case_id: str) -> NoSuchCase:
        if case_id in self._broken:
            group, problem = self._broken[case_id]
            return NoSuchCase(
                f"case is marked complete but {problem} "
                "(re-convert the case with pgps-convert or restore it)",
                path=f"{self.path}/{group}/{case_id}",
            )
        if case_id in self.meta.get("training_cases", []):
            return NoSuchCase(
                f"case {case_id!r} was never completely written (the conversion did not "
                "finish: rerun pgps-convert with the same arguments)", path=self.path
            )
        return NoSuchCase(f"no case {case_id!r} (pgps-inspect lists the cases)", path=self.path)

    def __len__(self) -> int:
        return len(self.case_ids)

    def __iter__(self) -> Iterator[Case]:
        return (self[c] for c in self.case_ids)

    @property
    def labels(self) -> dict[str, int | list[int]]:
        """Label names to a value, or to a list of values for a region."""
        return dict(self.meta["labels"])

    @property
    def label_values(self) -> list[int]:
        """Every foreground value a label file may hold (not background, not ignore)."""
        return [int(v) for v in self.meta["label_values"]]

    @property
    def ignore_label(self) -> int | None:
        return self.meta.get("ignore_label")

    @property
    def channels(self) -> int:
        return len(self.meta["channel_names"])

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(self.meta["target_spacing"])  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, cases={len(self.case_ids)}, test={len(self.test_ids)})"


class Case:
    """One preprocessed case: arrays, metadata, foreground indices and the crop read."""

    def __init__(
        self, case_id: str, group: zarr.Group, is_test: bool = False, where: str | None = None
    ):
        self.id = case_id
        self.group = group
        self.is_test = is_test
        self.where = where or f"case {case_id}"  # for messages: <store>/cases/<id>
        self.meta: dict[str, Any] = dict(group.attrs)
        self.image: zarr.Array = self._array("image")
        self.label: zarr.Array | None = None if is_test else self._array("label")
        self.shape: tuple[int, int, int] = tuple(self.image.shape[1:])  # type: ignore
        self.channels: int = int(self.image.shape[0])
        self._fast_image: FastArray | None | bool = False  # False = not tried yet
        self._fast_label: FastArray | None | bool = False
        self._fg: dict[str, np.ndarray] = {}
        self._locations: dict[tuple[tuple[int, ...], ...], dict[tuple[int, ...], np.ndarray]] = {}

    # -- crops --------------------------------------------------------------------------
    def read(
        self,
        origin: Sequence[int],
        shape: Sequence[int],
        *,
        out_image: np.ndarray | None = None,
        out_label: np.ndarray | None = None,
        label_pad: int = 0,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Image (C, *shape) float32 and label (*shape) uint8 of the box at ``origin``.

        The box may cross or lie outside the volume: outside, the image is 0 and the label
        ``label_pad`` (background unless told). ``out_*`` let the caller decode straight
        into preallocated (e.g. shared) memory. Unlabelled cases return label None.
        """
        origin = tuple(int(o) for o in origin)
        shape = tuple(int(s) for s in shape)
        image = self._boxes("image", origin, shape, out_image, 0, many=False)
        if self.label is None:
            return image, None
        return image, self._boxes("label", origin, shape, out_label, label_pad, many=False)

    def read_many(
        self,
        origins: Sequence[Sequence[int]],
        shape: Sequence[int],
        *,
        out_image: np.ndarray | None = None,
        out_label: np.ndarray | None = None,
        label_pad: int = 0,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Many boxes of one size from this case: (n, C, *shape) and (n, *shape).

        Each chunk the boxes touch is decoded once, which is what makes the performance
        mode's many small crops per case cheap.
        """
        shape = tuple(int(s) for s in shape)
        origins = [tuple(int(o) for o in org) for org in origins]
        image = self._boxes("image", origins, shape, out_image, 0, many=True)
        if self.label is None:
            return image, None
        return image, self._boxes("label", origins, shape, out_label, label_pad, many=True)

    def _boxes(self, which: str, where, shape, out, pad: int, *, many: bool) -> np.ndarray:  # noqa: ANN001
        """One box (``many=False``, ``where`` an origin) or a stack of boxes of one array,
        by the fast path when it can read the array, else by zarr-python."""
        dtype = np.float32 if which == "image" else None
        fast = self._fast(which)
        if fast is not None:
            read = fast.read_many if many else fast.read
            return read(where, shape, out=out, pad_value=pad, dtype=dtype)
        arr = self.image if which == "image" else self.label
        if many:
            return _into(np.stack([read_box_zarr(arr, o, shape, pad) for o in where]), out, dtype)
        return _into(read_box_zarr(arr, where, shape, pad), out, dtype)

    @property
    def uses_fast_path(self) -> bool:
        """True when crops of this case are read by the fast path, not zarr-python."""
        return self._fast("image") is not None and (
            self.label is None or self._fast("label") is not None
        )

    def _array(self, name: str) -> zarr.Array:
        """``group[name]``; an array that vanished is one line naming case and array."""
        try:
            return self.group[name]  # type: ignore[return-value]
        except KeyError:
            raise PGPSInputError(
                "array is missing (deleted after the store was opened?) "
                "(re-convert the case with pgps-convert or restore it)",
                path=f"{self.where}/{name}",
            ) from None
        except (ValueError, TypeError) as exc:  # its zarr.json is damaged (not checksummed)
            raise PGPSInputError(
                f"array metadata (zarr.json) is unreadable ({type(exc).__name__}); the store "
                "is corrupt: re-convert with pgps-convert --overwrite or restore the store",
                path=f"{self.where}/{name}",
            ) from None

    def _fast(self, which: str) -> FastArray | None:
        attr = f"_fast_{which}"
        fast = getattr(self, attr)
        if fast is False:
            arr = self.image if which == "image" else self.label
            fast = reader_for(arr)
            setattr(self, attr, fast)
        return fast  # type: ignore[return-value]

    # -- foreground indices --------------------------------------------------------------
    def foreground(self, value: int) -> np.ndarray:
        """(N, 3) int voxel coordinates of label ``value`` (nnU-Net's sampled subset).

        A value absent from the case gives an empty (0, 3) array.
        """
        return self._index(f"fg_{int(value)}")

    def class_locations(
        self, classes: Sequence[tuple[int, ...]]
    ) -> dict[tuple[int, ...], np.ndarray]:
        """Voxel coordinates per class, a class being label values whose indices are joined
        (a region's values, or one value): what a forced crop centres on. Kept with the
        case, so it lives as long as the case stays in the store's cache."""
        key = tuple(map(tuple, classes))
        found = self._locations.get(key)
        if found is None:
            found = {}
            for cls in key:
                parts = [self.foreground(int(v)) for v in cls]
                found[cls] = parts[0] if len(parts) == 1 else np.concatenate(parts)
            self._locations[key] = found
        return found

    def annotated(self) -> np.ndarray:
        """(N, 3) coordinates of annotated (non-ignore) voxels; only with an ignore label."""
        if "annotated" not in self.meta.get("index_arrays", []):
            raise KeyError(f"case {self.id}: the store has no ignore label, so no annotated()")
        return self._index("annotated")

    def labels_present(self) -> list[int]:
        """Label values with at least one voxel in this case."""
        counts = self.meta.get("label_counts", {})
        return sorted(int(v) for v, n in counts.items() if n > 0)

    def _index(self, name: str) -> np.ndarray:
        arr = self._fg.get(name)
        if arr is None:
            if name in self.meta.get("index_arrays", []):
                index = self._array(name)  # zarr-python verifies the crc; one line if bad
                arr = np.asarray(read_checked(index, (0,) * index.ndim, index.shape), np.int64)
            else:
                arr = np.zeros((0, 3), np.int64)
            self._fg[name] = arr
        return arr

    def __repr__(self) -> str:
        return f"Case({self.id!r}, channels={self.channels}, shape={self.shape})"


def _into(arr: np.ndarray, out: np.ndarray | None, dtype: Any) -> np.ndarray:
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    if out is None:
        return np.ascontiguousarray(arr)
    out[...] = arr
    return out
