"""Finding the cases of a raw dataset: Medical Segmentation Decathlon or nnU-Net v2 layout.

:func:`discover` reads ``dataset.json`` and returns a :class:`DatasetSpec`: the channels,
their modalities, the labels and the list of training and test cases with their files.
Nothing is opened except dataset.json and directory listings; every case that cannot be
used is reported as one line in ``DatasetSpec.problems`` and left out, so the rest of the
dataset still converts.

Safety: an entry that points outside the dataset folder (absolute path, ``..``, or a
symlink that resolves outside) is refused before anything opens it. Case ids must be
unique: ids that repeat are refused together (every entry named), and an id used by both
a training and a test case keeps the training case (the labelled one) and refuses the
test case. macOS ``._*`` resource-fork files (shipped in the MSD tarballs) are ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgps_data.errors import PGPSInputError, read_json

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
    """What a raw dataset holds. All fields are JSON-friendly (lists, dicts, str, int)."""

    layout: str  # "msd" or "nnunet"
    name: str
    root: str
    channel_names: list[str]
    modalities: list[str]  # "CT" decides CT normalisation; other names z-score
    labels: dict[str, int | list[int]]
    label_values: list[int]  # every integer a label file may hold, incl. 0 and ignore
    ignore_label: int | None
    regions_class_order: list[int] | None
    training: list[CaseSpec] = field(default_factory=list)
    test: list[CaseSpec] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # cases left out, one line each
    warnings: list[str] = field(default_factory=list)  # noted, nothing left out


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
    meta = read_json(meta_path, "an MSD or nnU-Net raw dataset needs one")
    if not isinstance(meta, dict):
        raise PGPSInputError(f"{meta_path}: must hold a JSON object")
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
    return spec


# --------------------------------------------------------------------------------- MSD


def _msd(root: Path, meta: dict[str, Any], meta_path: Path) -> DatasetSpec:
    channel_names = _channel_list(meta["modality"], meta_path, "modality")
    raw_labels = meta.get("labels")
    if not isinstance(raw_labels, dict) or not raw_labels:
        raise PGPSInputError(f"{meta_path}: 'labels' must map values to names")
    labels: dict[str, int | list[int]] = {}
    for value, name in raw_labels.items():
        try:
            labels[str(name)] = int(value)
        except ValueError as exc:
            raise PGPSInputError(f"{meta_path}: label value {value!r} is not an integer") from exc
    spec = _spec("msd", root, meta, channel_names, labels, meta_path)
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
        image = _inside(root, entry["image"], where, spec.problems)
        label = _inside(root, entry["label"], where, spec.problems)
        if image and label:
            spec.training.append(CaseSpec(_case_id(image, None), [image], label, False))
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
        image = _inside(root, entry, where, spec.problems)
        if image:
            spec.test.append(CaseSpec(_case_id(image, None), [image], None, True))
    _count(spec, meta, "numTraining", len(spec.training), meta_path)
    return spec


# ------------------------------------------------------------------------------ nnU-Net


def _nnunet(root: Path, meta: dict[str, Any], meta_path: Path) -> DatasetSpec:
    channel_names = _channel_list(meta["channel_names"], meta_path, "channel_names")
    raw_labels = meta.get("labels")
    if not isinstance(raw_labels, dict) or not raw_labels:
        raise PGPSInputError(f"{meta_path}: 'labels' must map names to values")
    labels: dict[str, int | list[int]] = {}
    for name, value in raw_labels.items():
        values = value if isinstance(value, list | tuple) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise PGPSInputError(
                f"{meta_path}: label {name!r} must be an integer or a list of them"
            )
        labels[str(name)] = list(values) if isinstance(value, list | tuple) else int(value)
    ending = meta["file_ending"]
    if not isinstance(ending, str) or not ending.startswith("."):
        raise PGPSInputError(f"{meta_path}: 'file_ending' must look like '.nii.gz'")
    spec = _spec("nnunet", root, meta, channel_names, labels, meta_path)
    n_ch = len(channel_names)
    if isinstance(meta.get("dataset"), dict):  # explicit paths, relative to the root
        for case_id, entry in sorted(meta["dataset"].items()):
            where = f"{meta_path}: dataset[{case_id!r}]"
            imgs = entry.get("images") if isinstance(entry, dict) else None
            if not isinstance(imgs, list) or len(imgs) != n_ch or "label" not in entry:
                spec.problems.append(f"{where}: needs {n_ch} 'images' and a 'label'; case skipped")
                continue
            paths = [_inside(root, p, where, spec.problems) for p in imgs]
            label = _inside(root, entry["label"], where, spec.problems)
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
        if labels is not None:
            problems.append(f"{folder}: missing; no training cases found")
        return []
    pattern = re.compile(r"(.+)_(\d{4})" + re.escape(ending))
    found: dict[str, set[int]] = {}
    for name in sorted(os.listdir(folder)):
        if _is_junk(name) or not name.endswith(ending):
            continue
        m = pattern.fullmatch(name)
        if m is None:
            problems.append(f"{folder / name}: not named <case>_<channel:04d>{ending}; ignored")
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
            _inside(root, f"{images}/{case_id}_{c:04d}{ending}", where, problems)
            for c in range(n_ch)
        ]
        label = None
        if labels is not None:
            label = _inside(root, f"{labels}/{case_id}{ending}", where, problems)
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
        if case_id not in known and f"/{case_id}:" not in failed:
            spec.warnings.append(f"{folder / name}: label without images in imagesTr; ignored")


# ------------------------------------------------------------------------------ shared


def _spec(
    layout: str,
    root: Path,
    meta: dict[str, Any],
    channel_names: list[str],
    labels: dict[str, int | list[int]],
    meta_path: Path,
) -> DatasetSpec:
    ignore = labels.get("ignore")
    if isinstance(ignore, list):
        raise PGPSInputError(f"{meta_path}: the 'ignore' label must be a single integer")
    values = sorted(
        {v for val in labels.values() for v in (val if isinstance(val, list) else [val])} | {0}
    )
    if values[0] < 0 or values[-1] > 255:
        raise PGPSInputError(f"{meta_path}: label values must lie in 0..255, found {values}")
    order = meta.get("regions_class_order")
    has_regions = any(isinstance(v, list) for v in labels.values())
    if has_regions and not isinstance(order, list):
        raise PGPSInputError(f"{meta_path}: region labels need 'regions_class_order'")
    return DatasetSpec(
        layout=layout,
        name=str(meta.get("name") or root.resolve().name),
        root=str(root.resolve()),
        channel_names=channel_names,
        modalities=[NORMALISATION_NAMES.get(n.casefold(), n) for n in channel_names],
        labels=labels,
        label_values=values,
        ignore_label=None if ignore is None else int(ignore),
        regions_class_order=[int(v) for v in order] if isinstance(order, list) else None,
    )


def _channel_list(raw: Any, meta_path: Path, key: str) -> list[str]:
    if not isinstance(raw, dict) or not raw:
        raise PGPSInputError(f"{meta_path}: '{key}' must map channel index to name")
    try:
        items = sorted((int(k), str(v)) for k, v in raw.items())
    except ValueError as exc:
        raise PGPSInputError(f"{meta_path}: '{key}' keys must be channel indices") from exc
    if [k for k, _ in items] != list(range(len(items))):
        raise PGPSInputError(f"{meta_path}: '{key}' indices must be 0..{len(items) - 1}")
    return [v for _, v in items]


def _inside(root: Path, entry: Any, where: str, problems: list[str]) -> str | None:
    """Absolute path of ``entry`` under ``root``, or None (problem recorded, not opened)."""
    if not isinstance(entry, str) or not entry:
        problems.append(f"{where}: {entry!r} is not a file path; case skipped")
        return None
    if os.path.isabs(entry) or ".." in Path(entry).parts:
        problems.append(f"{where}: {entry!r} points outside the dataset folder; case refused")
        return None
    base = root.resolve()
    path = base / entry
    real = Path(os.path.realpath(path))
    if real != base and base not in real.parents:
        problems.append(
            f"{where}: {entry!r} resolves outside the dataset folder ({real}); case refused"
        )
        return None
    if not real.is_file():
        problems.append(f"{where}: {entry!r} is missing; case skipped")
        return None
    return str(path)


def _case_id(path: str, ending: str | None) -> str:
    name = Path(path).name
    if ending is None:
        from pgps_data.ingest.readers import file_ending

        ending = file_ending(name) or Path(name).suffix
    return name[: -len(ending)] if ending and name.endswith(ending) else name


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
                    files = ", ".join(c.image_paths[0] for c in same)
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
                f"{case.image_paths[0]}: test case id {case.case_id!r} is also a "
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
