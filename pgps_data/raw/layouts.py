"""Finding the cases of a raw dataset: Medical Segmentation Decathlon or nnU-Net v2 layout.

:func:`discover` reads ``dataset.json`` and returns a :class:`DatasetSpec`: the channels,
their modalities, the labels and the list of training and test cases with their files.
Nothing is opened except dataset.json and directory listings; every case that cannot be
used is reported as one line in ``DatasetSpec.problems`` and left out, so the rest of the
dataset still converts.

Safety (see :mod:`pgps_data.raw.entries`): an entry whose text is absolute or holds
``..`` is refused before anything opens it; symlinks inside the dataset folder are
followed wherever they point, and counted (``DatasetSpec.symlinked_cases``). Every case id
must be a safe folder name (:func:`check_case_id`) before any path is built from it. Case
ids must be unique: ids that repeat are refused together (every entry named), and an id
used by both a training and a test case keeps the training case (the labelled one) and
refuses the test case. The labels are read once, into :class:`~pgps_data.labels.Labels`
(``DatasetSpec.label_set``), with its checks: a label value (or MSD label name) declared
twice, or regions without a fitting ``regions_class_order``, refuse dataset.json. macOS ``._*`` resource-fork files (shipped in the MSD tarballs) are ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgps_data.dataset_json import channel_list, duplicates, read_dataset_json
from pgps_data.errors import PGPSInputError
from pgps_data.labels import Labels
from pgps_data.raw.entries import (
    check_case_id,
    dangling_folder,
    resolve_entry,
    show,
    through_symlink,
)

__all__ = ["CaseSpec", "DatasetSpec", "check_case_id", "discover"]

NORMALISATION_NAMES = {
    "ct": "CT",
    "nonorm": "noNorm",
    "rescale_to_0_1": "rescale_to_0_1",
    "rgb_to_0_1": "rgb_to_0_1",
    "zscore": "zscore",
}


@dataclass
class CaseSpec:
    """One case: its id, its image file(s), its label file (None for a test case)."""

    case_id: str
    image_paths: list[str]
    label_path: str | None
    is_test: bool = False


@dataclass
class DatasetSpec:
    """What a raw dataset holds: its channels, its labels, its cases."""

    layout: str  # "msd" or "nnunet"
    name: str
    root: str
    channel_names: list[str]
    modalities: list[str]  # "CT" decides CT normalisation; other names z-score
    label_set: Labels  # every label rule (values, regions, ignore, order)
    training: list[CaseSpec] = field(default_factory=list)
    test: list[CaseSpec] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # cases left out, one line each
    warnings: list[str] = field(default_factory=list)  # noted, nothing left out
    symlinked_cases: int = 0  # cases with a file (or folder) that is a symlink; in warnings

    # Views of label_set in the forms raw/convert.py reads (labels as declared, every value
    # a label file may hold): nothing is derived here.
    @property
    def labels(self) -> dict[str, int | list[int]]:
        return self.label_set.declared

    @property
    def label_values(self) -> list[int]:
        """Every integer a label file may hold, incl. 0 and the ignore label."""
        return self.label_set.all_values

    @property
    def ignore_label(self) -> int | None:
        return self.label_set.ignore_label

    @property
    def regions_class_order(self) -> list[int] | None:
        return self.label_set.regions_class_order


def discover(raw_dir: str | Path) -> DatasetSpec:
    """Detect the layout of ``raw_dir`` and list its cases.

    MSD: dataset.json with ``modality``, ``labels`` {"0": "background", ...},
    ``training`` [{"image", "label"}] and ``test`` [paths]; multi-channel images are 4D.
    nnU-Net v2: dataset.json with ``channel_names``, ``labels`` {name: value or [values]},
    ``file_ending``; images ``imagesTr/<id>_<channel:04d><ending>``, labels
    ``labelsTr/<id><ending>``, test images in ``imagesTs``; an explicit ``dataset`` dict of
    paths is honoured. Raises PGPSInputError when dataset.json is missing, not JSON, or
    fits neither layout.
    """
    root = Path(raw_dir)
    meta_path = root / "dataset.json"
    if not root.is_dir():
        raise PGPSInputError(f"{root}: not a directory (give the raw dataset folder)")
    meta = read_dataset_json(meta_path)
    if "channel_names" in meta and "file_ending" in meta:
        spec = _nnunet(root, meta, meta_path)
    elif "modality" in meta and "training" in meta:
        spec = _msd(root, meta, meta_path)
    else:
        raise PGPSInputError(
            f"{meta_path}: neither MSD (modality, training) nor nnU-Net v2 "
            "(channel_names, file_ending) layout"
        )
    _check_unique(spec)
    _count_symlinks(spec)
    return spec


# --------------------------------------------------------------------------------- MSD


def _msd(root: Path, meta: dict[str, Any], meta_path: Path) -> DatasetSpec:
    channel_names = channel_list(meta["modality"], meta_path, "modality")
    labels = Labels.from_dataset_json(meta, meta_path, form="msd")
    spec = _spec("msd", root, meta, channel_names, labels)
    training = meta.get("training") or []
    if not isinstance(training, list):
        raise PGPSInputError(f"{meta_path}: 'training' must be a list")
    for n, entry in enumerate(training):
        where = f"{meta_path}: training[{n}]"
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            spec.problems.append(f"{where}: needs 'image' and 'label'; case skipped")
            continue
        if _is_junk(entry["image"]) or _is_junk(entry["label"]):
            continue
        case_id = _msd_case_id(entry["image"], where, spec.problems)
        if case_id is None:
            continue
        image = resolve_entry(root, entry["image"], where, spec.problems)
        label = resolve_entry(root, entry["label"], where, spec.problems)
        if image and label:
            spec.training.append(CaseSpec(case_id, [image], label, False))
    test = meta.get("test") or []
    for n, entry in enumerate(test if isinstance(test, list) else []):
        where = f"{meta_path}: test[{n}]"
        if isinstance(entry, dict):  # some variants list {"image": ...}
            entry = entry.get("image")
        if not isinstance(entry, str):
            spec.problems.append(f"{where}: not a file path; case skipped")
            continue
        if _is_junk(entry):
            continue
        case_id = _msd_case_id(entry, where, spec.problems)
        image = resolve_entry(root, entry, where, spec.problems) if case_id else None
        if case_id and image:
            spec.test.append(CaseSpec(case_id, [image], None, True))
    _count(spec, meta, "numTraining", len(spec.training), meta_path)
    return spec


# ------------------------------------------------------------------------------ nnU-Net


def _nnunet(root: Path, meta: dict[str, Any], meta_path: Path) -> DatasetSpec:
    channel_names = channel_list(meta["channel_names"], meta_path, "channel_names")
    labels = Labels.from_dataset_json(meta, meta_path, form="nnunet")
    labels.require_order(meta_path)  # the store trains and exports: regions need their order
    ending = meta["file_ending"]
    if not isinstance(ending, str) or not ending.startswith("."):
        raise PGPSInputError(f"{meta_path}: 'file_ending' must look like '.nii.gz'")
    spec = _spec("nnunet", root, meta, channel_names, labels)
    n_ch = len(channel_names)
    if isinstance(meta.get("dataset"), dict):  # explicit paths, relative to the root
        twice = {key for key, _, _ in duplicates(meta["dataset"])}
        for case_id, entry in sorted(meta["dataset"].items()):
            where = f"{meta_path}: dataset[{case_id!r}]"
            unsafe = check_case_id(case_id)
            if unsafe is not None:
                spec.problems.append(f"{where}: {unsafe}; rename the entry; case refused")
                continue
            if case_id in twice:
                spec.problems.append(f"{where}: case id given twice in 'dataset'; both refused")
                continue
            imgs = entry.get("images") if isinstance(entry, dict) else None
            if not isinstance(imgs, list) or len(imgs) != n_ch or "label" not in entry:
                spec.problems.append(f"{where}: needs {n_ch} 'images' and a 'label'; case skipped")
                continue
            paths = [resolve_entry(root, p, where, spec.problems) for p in imgs]
            label = resolve_entry(root, entry["label"], where, spec.problems)
            if all(paths) and label:
                spec.training.append(CaseSpec(str(case_id), paths, label, False))  # type: ignore[arg-type]
    else:
        spec.training = _nnunet_folder(root, "imagesTr", "labelsTr", ending, n_ch, spec.problems)
        _orphan_labels(root, ending, spec)
    spec.test = _nnunet_folder(root, "imagesTs", None, ending, n_ch, spec.problems)
    _count(spec, meta, "numTraining", len(spec.training), meta_path)
    return spec


def _nnunet_folder(
    root: Path, images: str, labels: str | None, ending: str, n_ch: int, problems: list[str]
) -> list[CaseSpec]:
    folder = root / images
    if not folder.is_dir():
        dangling = dangling_folder(folder)
        if dangling is not None:
            problems.append(f"{dangling}; no {'training' if labels else 'test'} cases found")
        elif labels is not None:
            problems.append(f"{folder}: missing; no training cases found")
        return []
    pattern = re.compile(r"(.+)_(\d{4})" + re.escape(ending))
    found: dict[str, set[int]] = {}
    for name in sorted(os.listdir(folder)):
        if _is_junk(name) or not name.endswith(ending):
            continue
        m = pattern.fullmatch(name)
        if m is None:
            problems.append(
                f"{show(folder / name)}: not named <case>_<channel:04d>{ending}; ignored"
            )
            continue
        unsafe = check_case_id(m.group(1))
        if unsafe is not None:
            problems.append(f"{show(folder / name)}: {unsafe}; rename the file; case refused")
            continue
        found.setdefault(m.group(1), set()).add(int(m.group(2)))
    cases = []
    for case_id, chans in sorted(found.items()):
        where = f"{folder}/{case_id}"
        missing = [c for c in range(n_ch) if c not in chans]
        extra = sorted(c for c in chans if c >= n_ch)
        if missing or extra:
            what = f"missing channel file(s) {missing}" if missing else f"extra channels {extra}"
            problems.append(f"{where}: {what} for {n_ch} declared channel(s); case skipped")
            continue
        paths = [
            resolve_entry(root, f"{images}/{case_id}_{c:04d}{ending}", where, problems)
            for c in range(n_ch)
        ]
        label = None
        if labels is not None:
            label = resolve_entry(root, f"{labels}/{case_id}{ending}", where, problems)
            if label is None:
                continue
        if all(paths):
            cases.append(CaseSpec(case_id, paths, label, labels is None))  # type: ignore[arg-type]
    return cases


def _orphan_labels(root: Path, ending: str, spec: DatasetSpec) -> None:
    folder = root / "labelsTr"
    if not folder.is_dir():
        return
    known = {c.case_id for c in spec.training}
    failed = " ".join(spec.problems)
    for name in sorted(os.listdir(folder)):
        if _is_junk(name) or not name.endswith(ending):
            continue
        case_id = name[: -len(ending)]
        if check_case_id(case_id) is not None:
            continue  # never a case: its images (if any) are refused by name already
        if case_id not in known and f"/{case_id}:" not in failed:
            spec.warnings.append(f"{folder / name}: label without images in imagesTr; ignored")


# ------------------------------------------------------------------------------ shared


def _spec(
    layout: str,
    root: Path,
    meta: dict[str, Any],
    channel_names: list[str],
    labels: Labels,
) -> DatasetSpec:
    return DatasetSpec(
        layout=layout,
        name=str(meta.get("name") or root.resolve().name),
        root=str(root.resolve()),
        channel_names=channel_names,
        modalities=[NORMALISATION_NAMES.get(n.casefold(), n) for n in channel_names],
        label_set=labels,
    )


def _msd_case_id(entry: Any, where: str, problems: list[str]) -> str | None:
    """The case id an MSD image entry gives (its file name less the ending), if safe."""
    if not isinstance(entry, str) or not entry:
        problems.append(f"{where}: {entry!r} is not a file path; case skipped")
        return None
    from pgps_data.raw.readers import file_ending

    name = Path(entry).name
    ending = file_ending(name) or Path(name).suffix
    case_id = name[: -len(ending)] if ending and name.endswith(ending) else name
    unsafe = check_case_id(case_id)
    if unsafe is not None:
        problems.append(f"{where}: {entry!r}: {unsafe}; rename the file; case refused")
        return None
    return case_id


def _count_symlinks(spec: DatasetSpec) -> None:
    cases = spec.training + spec.test
    root = Path(spec.root)
    linked = sum(
        any(through_symlink(root, p) for p in [*c.image_paths, c.label_path] if p) for c in cases
    )
    spec.symlinked_cases = linked
    if linked:
        spec.warnings.append(
            f"{spec.root}: {linked} of {len(cases)} cases are read through symlinks "
            "(files or folders)"
        )


def _is_junk(entry: Any) -> bool:
    return isinstance(entry, str) and Path(entry).name.startswith("._")


def _count(spec: DatasetSpec, meta: dict[str, Any], key: str, found: int, meta_path: Path) -> None:
    declared = meta.get(key)
    if isinstance(declared, int) and declared != found:
        spec.warnings.append(f"{meta_path}: {key} is {declared} but {found} usable case(s) found")


def _check_unique(spec: DatasetSpec) -> None:
    for attr in ("training", "test"):
        cases: list[CaseSpec] = getattr(spec, attr)
        groups = _group(cases)
        keep = []
        for case in cases:
            same = groups[case.case_id]
            if len(same) > 1:
                if case is same[0]:
                    files = ", ".join(show(c.image_paths[0]) for c in same)
                    spec.problems.append(
                        f"{spec.root}: case id {case.case_id!r} is used by "
                        f"{len(same)} {attr} entries ({files}); all refused"
                    )
                continue
            keep.append(case)
        setattr(spec, attr, keep)
    train_ids = {c.case_id for c in spec.training}
    kept_test = []
    for case in spec.test:
        if case.case_id in train_ids:
            spec.problems.append(
                f"{show(case.image_paths[0])}: test case id {case.case_id!r} is also a "
                "training case; the test case is refused"
            )
        else:
            kept_test.append(case)
    spec.test = kept_test


def _group(cases: Iterable[CaseSpec]) -> dict[str, list[CaseSpec]]:
    groups: dict[str, list[CaseSpec]] = {}
    for case in cases:
        groups.setdefault(case.case_id, []).append(case)
    return groups
