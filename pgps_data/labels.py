"""The labels of a dataset in one place: values, regions, the ignore label, the paint order.

A dataset.json declares its labels in one of two forms: MSD ``{"0": "background", "1":
"liver"}`` or nnU-Net v2 ``{"background": 0, "liver": 1}``, where a label may also map to
a list of values, a *region*: the union of those values (BraTS: ``"whole tumor": [1, 2,
3]``). :class:`Labels` is built from that once, when a raw dataset is converted
(:meth:`Labels.from_dataset_json`), and from the store's attrs everywhere after
(:meth:`Labels.from_store`; :meth:`Labels.from_dict` for the same keys in model.json and
pgps-predict's labels.json). Every rule that follows from the labels lives here, so
conversion, sampling, the loss, inference and scoring cannot disagree.

The rules are nnU-Net v2's ``LabelManager`` (nnunetv2/utilities/label_handling/
label_handling.py):

- **Regions** (:attr:`Labels.has_regions`) when some label maps to a list or tuple of
  more than one value. The network then has one sigmoid output per foreground region:
  the declared labels in order, less ``ignore`` and those that are background only (a
  one-value list such as BraTS' ``"enhancing tumor": [3]`` is a region too). A label map
  is painted from the probabilities: for region i in order, the voxels with p_i > 0.5
  get ``regions_class_order[i]``, later regions overwriting earlier ones
  (``convert_probabilities_to_segmentation``), so ``regions_class_order`` gives one
  value per region.
- Otherwise **softmax**: output 0 is background and output k the k-th foreground value in
  ascending order; the label map is the value of the argmax.
- The **ignore label** is the label named ``ignore`` (one integer): its voxels count for
  nothing, neither in the loss nor in the pseudo-Dice nor in the scores.

Scores are per declared label, a region scoring the union of its values; background and
ignore are not scored. Labels is immutable and survives a JSON round trip
(``Labels.from_dict(labels.to_dict()) == labels``, for labels that can train: regions
with their order) and pickling; :meth:`Labels.to_dict` holds exactly
the store attrs a conversion writes (``labels``, ``label_values``, ``ignore_label``,
``regions_class_order``), so stores written before open unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pgps_data.dataset_json import msd_labels, nnunet_labels, read_dataset_json
from pgps_data.errors import PGPSInputError

__all__ = ["Labels"]

IGNORE = "ignore"  # nnU-Net: the label of this name is the ignore label
MAX_VALUE = 255  # label maps are stored as uint8

Declared = tuple[tuple[str, int | tuple[int, ...]], ...]  # (name, value or region), in order


class Labels:
    """A dataset's labels and every rule derived from them (see the module doc).

    ``labels`` maps names to a value or a list of values (the nnU-Net form);
    ``ignore_label`` may be given explicitly (model.json, labels.json) and must then agree
    with a label named ``ignore``; ``regions_class_order``, when given, has one value per
    region. Scoring needs no order; training and label maps do (:meth:`require_order`,
    which conversion and :meth:`from_dict` apply). A bad declaration is one
    :class:`~pgps_data.errors.PGPSInputError` line starting ``where``.
    """

    __slots__ = ("_declared", "_ignore", "_order")

    def __init__(self, labels: Mapping[str, int | Sequence[int]], *,
                 ignore_label: int | None = None,
                 regions_class_order: Sequence[int] | None = None,
                 where: str | Path = "labels"):
        declared = _declared(labels, where)
        ignore = _ignore_label(declared, ignore_label, where)
        order = _order(regions_class_order, where)
        values = sorted({v for _, val in declared for v in _values(val)} | {0})
        if values[0] < 0 or values[-1] > MAX_VALUE:
            raise PGPSInputError(f"{where}: label values must lie in 0..{MAX_VALUE}, found {values}")
        if _has_regions(declared) and order is not None:
            regions = _regions(declared)
            if len(order) != len(regions):
                raise PGPSInputError(
                    f"{where}: 'regions_class_order' has {len(order)} value(s) but the labels "
                    f"declare {len(regions)} region(s) ({', '.join(n for n, _ in regions)}); "
                    "give one value per region, in label order")
        object.__setattr__(self, "_declared", declared)
        object.__setattr__(self, "_ignore", ignore)
        object.__setattr__(self, "_order", order)

    # -- building ----------------------------------------------------------------------
    @classmethod
    def from_dataset_json(cls, meta: Mapping[str, Any], where: str | Path,
                          form: str | None = None) -> Labels:
        """The labels of a dataset.json object: ``labels``, ``regions_class_order`` (and
        ``ignore_label``, which pgps' own labels.json and model.json carry).

        ``form`` is "msd" ({"0": "background", ...}) or "nnunet" ({name: value or
        [values]}); None decides by the values (all strings: MSD). Labels declared twice
        (a key repeated in the file, read with
        :func:`pgps_data.dataset_json.read_dataset_json`; two names for one value; one
        name for two values) are refused in one line naming both.
        """
        raw = meta.get("labels") if isinstance(meta, Mapping) else None
        if form is None:
            strings = isinstance(raw, Mapping) and raw and all(isinstance(v, str) for v in raw.values())
            form = "msd" if strings else "nnunet"
        labels = msd_labels(raw, where) if form == "msd" else nnunet_labels(raw, where)
        return cls(labels, ignore_label=meta.get("ignore_label"),
                   regions_class_order=_order_or_none(meta.get("regions_class_order")),
                   where=where)

    @classmethod
    def from_json_file(cls, path: str | Path) -> Labels:
        """The labels of a JSON file: an MSD or nnU-Net dataset.json, or pgps' labels.json."""
        meta = read_dataset_json(Path(path), hint="give a dataset.json or labels.json")
        return cls.from_dataset_json(meta, path)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str | Path = "labels") -> Labels:
        """From :meth:`to_dict`'s keys: a store's attrs, model.json, labels.json.

        What trains or predicts needs the paint order, so regions without
        ``regions_class_order`` are refused (:meth:`require_order`). ``label_values``, when
        present, must be the foreground values the labels give (a hand-edited file that
        disagrees with itself is refused).
        """
        if not isinstance(d, Mapping) or not isinstance(d.get("labels"), Mapping):
            raise PGPSInputError(f"{where}: no 'labels' object (was it written by pgps?)")
        labels = cls(d["labels"], ignore_label=d.get("ignore_label"),
                     regions_class_order=_order_or_none(d.get("regions_class_order")),
                     where=where)
        labels.require_order(where)
        given = d.get("label_values")
        if given is not None and (not isinstance(given, list | tuple) or not all(
                _is_int(v) for v in given) or [int(v) for v in given] != labels.foreground_values):
            raise PGPSInputError(f"{where}: label_values {list(given)} disagree with the labels "
                                 f"(foreground values {labels.foreground_values})")
        return labels

    @classmethod
    def from_store(cls, store: Any) -> Labels:
        """The labels of an open store (its attrs, as conversion wrote them)."""
        return cls.from_dict(store.meta, where=str(store.path))

    def require_order(self, where: str | Path) -> None:
        """Refuse regions without ``regions_class_order`` (nnU-Net refuses them too): the
        order is what turns region probabilities into a label map."""
        if self.has_regions and self._order is None:
            raise PGPSInputError(f"{where}: region labels need 'regions_class_order' (one "
                                 "value per region, painted in that order)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the store attrs a conversion writes, also model.json's label keys."""
        return {
            "labels": self.declared,
            "label_values": self.foreground_values,
            "ignore_label": self._ignore,
            "regions_class_order": self.regions_class_order,
        }

    # -- what was declared ---------------------------------------------------------------
    @property
    def declared(self) -> dict[str, int | list[int]]:
        """Names to a value or a list of values (a region), as dataset.json gives them."""
        return {n: (list(v) if isinstance(v, tuple) else v) for n, v in self._declared}

    @property
    def ignore_label(self) -> int | None:
        return self._ignore

    @property
    def regions_class_order(self) -> list[int] | None:
        """The value each region paints, as declared (used only with regions)."""
        return None if self._order is None else list(self._order)

    @property
    def all_values(self) -> list[int]:
        """Every value a label file may hold: 0, each declared value, the ignore label."""
        values = {v for _, val in self._declared for v in _values(val)} | {0}
        return sorted(values | ({self._ignore} if self._ignore is not None else set()))

    @property
    def foreground_values(self) -> list[int]:
        """The declared values less background (0) and the ignore label, ascending."""
        return [v for v in self.all_values if v != 0 and v != self._ignore]

    # -- the network's outputs -------------------------------------------------------------
    @property
    def has_regions(self) -> bool:
        """nnU-Net's rule: some label maps to a list or tuple of more than one value."""
        return _has_regions(self._declared)

    @property
    def regions(self) -> list[tuple[int, ...]]:
        """The foreground regions in label order (values as declared); [] without regions."""
        return [r for _, r in _regions(self._declared)] if self.has_regions else []

    @property
    def nonlinearity(self) -> str:
        """"sigmoid" (one output per region) or "softmax" (background + each value)."""
        return "sigmoid" if self.has_regions else "softmax"

    @property
    def output_channels(self) -> list[int] | list[list[int]]:
        """What each output channel stands for: a label value (softmax, background first)
        or a region's values (sigmoid)."""
        if self.has_regions:
            return [list(r) for r in self.regions]
        return [0, *self.foreground_values]

    @property
    def num_outputs(self) -> int:
        return len(self.output_channels)

    def label_map(self, probabilities: np.ndarray) -> np.ndarray:
        """(K, Z, Y, X) probabilities → (Z, Y, X) uint8 label values.

        Softmax: the value of the argmax. Regions: nnU-Net's painting, for region i in
        order the voxels with p_i > 0.5 get ``regions_class_order[i]``, later ones win.
        """
        probs = np.asarray(probabilities)
        if probs.shape[0] != self.num_outputs:
            raise ValueError(f"{probs.shape[0]} probability channels, the labels give "
                             f"{self.num_outputs}")
        if not self.has_regions:
            return np.asarray(self.output_channels, dtype=np.uint8)[np.argmax(probs, axis=0)]
        self.require_order("labels")
        seg = np.zeros(probs.shape[1:], dtype=np.uint8)
        for i, value in enumerate(self._order):  # type: ignore[arg-type]
            seg[probs[i] > 0.5] = value
        return seg

    # -- training ------------------------------------------------------------------------
    def class_lut(self) -> np.ndarray:
        """(256,) int64 softmax targets: value → class index.

        Background and undeclared values 0, the k-th foreground value k, the ignore value
        one past the last class (the index the loss and the pseudo-Dice leave out).
        """
        lut = np.zeros(MAX_VALUE + 1, dtype=np.int64)
        fg = self.foreground_values
        for k, v in enumerate(fg, start=1):
            lut[v] = k
        if self._ignore is not None:
            lut[self._ignore] = len(fg) + 1
        return lut

    def region_lut(self) -> np.ndarray:
        """(256, R) bool region targets: whether value v lies in region r (nnU-Net's
        ``ConvertSegmentationToRegionsTransform``)."""
        lut = np.zeros((MAX_VALUE + 1, len(self.regions)), dtype=bool)
        for r, values in enumerate(self.regions):
            lut[list(values), r] = True
        return lut

    def forced_classes(self) -> list[tuple[int, ...]]:
        """What a foreground-forced crop may centre on, each class as the values whose
        stored voxels it unites: each foreground region once, in label order (nnU-Net
        collects the class locations of ``foreground_regions``), or each foreground value."""
        if not self.has_regions:
            return [(v,) for v in self.foreground_values]
        out: list[tuple[int, ...]] = []
        for region in self.regions:
            if region not in out:
                out.append(region)
        return out

    # -- scoring -------------------------------------------------------------------------
    def scored(self) -> dict[str, list[int]]:
        """Name → the values a Dice score unites, for every label but background and ignore."""
        out = {}
        for name, value in self._declared:
            values = sorted(set(_values(value)))
            if name == IGNORE or values == [0] or values == [self._ignore]:
                continue
            out[name] = values
        return out

    # -- value semantics -------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Labels is immutable")

    def __reduce__(self) -> tuple[Any, ...]:  # pickled by value (conversion workers)
        return (_rebuild, (self.declared, self._ignore, self.regions_class_order))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Labels):
            return NotImplemented
        return (self._declared, self._ignore, self._order) == (
            other._declared, other._ignore, other._order)

    def __hash__(self) -> int:
        return hash((self._declared, self._ignore, self._order))

    def __repr__(self) -> str:
        order = f", regions_class_order={self.regions_class_order}" if self.has_regions else ""
        return f"Labels({self.declared}{order})"


# ----------------------------------------------------------------------------- internals


def _rebuild(declared: dict[str, Any], ignore: int | None, order: list[int] | None) -> Labels:
    return Labels(declared, ignore_label=ignore, regions_class_order=order)


def _values(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,)


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _has_regions(declared: Declared) -> bool:
    return any(isinstance(v, tuple) and len(v) > 1 for _, v in declared)


def _regions(declared: Declared) -> list[tuple[str, tuple[int, ...]]]:
    """(name, values) of nnU-Net's foreground regions: not ``ignore``, not background only."""
    return [(n, _values(v)) for n, v in declared
            if n != IGNORE and set(_values(v)) != {0}]


def _declared(labels: Any, where: str | Path) -> Declared:
    """The nnU-Net form checked: integers or non-empty lists of them, plain values unique."""
    if not isinstance(labels, Mapping) or not labels:
        raise PGPSInputError(f"{where}: 'labels' must map names to values")
    out = []
    seen: dict[int, str] = {}
    for name, value in labels.items():
        values = value if isinstance(value, list | tuple) else [value]
        if not values or not all(_is_int(v) for v in values):
            raise PGPSInputError(f"{where}: label {name!r} must be an integer or a list of them")
        if isinstance(value, list | tuple):
            out.append((str(name), tuple(int(v) for v in values)))
            continue
        value = int(value)
        if value in seen:  # region lists may overlap, that is their point; plain values not
            raise PGPSInputError(
                f"{where}: label value {value} is declared twice ({seen[value]!r} and "
                f"{name!r}); give each label its own value (overlapping labels are region lists)")
        seen[value] = str(name)
        out.append((str(name), value))
    return tuple(out)


def _ignore_label(declared: Declared, given: Any, where: str | Path) -> int | None:
    named = dict(declared).get(IGNORE)
    if isinstance(named, tuple):
        raise PGPSInputError(f"{where}: the 'ignore' label must be a single integer")
    if given is not None and not _is_int(given):
        raise PGPSInputError(f"{where}: 'ignore_label' must be an integer, got {given!r}")
    if given is not None and named is not None and int(given) != named:
        raise PGPSInputError(f"{where}: 'ignore_label' {given} disagrees with the 'ignore' "
                             f"label {named}; give one value")
    ignore = named if named is not None else given
    return None if ignore is None else int(ignore)


def _order_or_none(order: Any) -> Any:
    """A dataset.json ``regions_class_order`` that is not a list says nothing (as before)."""
    return order if isinstance(order, list | tuple) else None


def _order(order: Sequence[int] | None, where: str | Path) -> tuple[int, ...] | None:
    if order is None:
        return None
    if not isinstance(order, list | tuple) or not all(_is_int(v) for v in order):
        raise PGPSInputError(f"{where}: 'regions_class_order' must be a list of integers")
    return tuple(int(v) for v in order)
