"""Seeded CT-like phantom datasets: the embedded default data of the demo, tests and benchmarks.

Each case is a torso-like body (soft tissue ~40 HU, a fat rim, a spine) in air (-1000 HU)
inside a field of view, with a zero-valued margin outside it on some sides (so cropping to
the non-zero bounding box really crops), an organ (label 1, ``organ_fraction`` of the voxels)
and a few small bright lesions inside it (label 2, at most 0.1 % of the voxels: rare but
learnable). An optional second channel is MR-like (zero background, other contrasts, a bias
field and a per-case scale/offset, so per-case z-scoring matters).

With ``regions`` (nnU-Net layout) the labels are BraTS-like nested regions, as nnU-Net's
BraTS datasets declare them: values 1 organ, 2 a core shell around each lesion, 3 the
lesions, and the regions ``whole`` [1, 2, 3] ⊃ ``core`` [2, 3] ⊃ ``enhancing`` [3] with
``regions_class_order`` [1, 2, 3]; the ignore label is then 4 (nnU-Net wants it above
every other value). Without regions the ignore label is 3.

Every case has its own anisotropic spacing and a non-identity affine (a few degrees of
oblique rotation, the usual LPS-style flips, a non-zero origin), so conversion really
resamples. Same arguments and seed give byte-identical files (gzip mtime is fixed at 0).
Arrays are (Z, Y, X) = the file's voxel axes slowest-first (k, j, i); spacings likewise.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pgps_data.errors import PGPSInputError
from pgps_data.synthetic.phantom import (
    DEFAULT_LESIONS,
    LESION_BENCHMARK,
    LesionSpec,
    anatomy,
    core_shell,
    ct_image,
    mark_ignore,
    mr_image,
    oblique_affine,
)

__all__ = ["PRESETS", "SyntheticCase", "case_spacing", "synthetic_case", "write_synthetic_dataset"]

NOMINAL_SPACING = (2.25, 0.75, 0.75)  # centre of the spacing ranges below, (Z, Y, X) mm
REGION_LABELS = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}
REGIONS_CLASS_ORDER = [1, 2, 3]  # whole paints 1, core 2, enhancing 3: the values back
CHANNEL_NAMES = ("CT", "MR")
FILE_ENDINGS = (".nii.gz", ".nrrd", ".mha")
_MARKER = "pgps-synth"
SPLITS_FILE = "splits_final.json"  # with held_out: nnU-Net's format, one fold

# Named datasets (keyword arguments of write_synthetic_dataset). "lesion": the embedded
# lesion benchmark of pgps-compare: 16 training and 24 held-out labelled cases (fold 0 of
# its splits_final.json), lesions <= 0.05 % of the voxels, varied in size and contrast.
PRESETS: dict[str, dict] = {
    "lesion": {"cases": 40, "held_out": 24, "test_cases": 0, "size": (40, 80, 80),
               "lesions": 4, "lesion_spec": LESION_BENCHMARK},
}  # first word of dataset.json "description"; marks a rerunnable dir


@dataclass(frozen=True)
class SyntheticCase:
    """One phantom in memory: ``images`` (Z, Y, X) per channel (CT int16, MR float32),
    ``label`` (Z, Y, X) uint8, ``spacing`` (Z, Y, X) mm and the 4x4 RAS ``affine`` mapping
    (i, j, k, 1) to mm as nibabel reports it."""

    case_id: str
    images: tuple[np.ndarray, ...]
    label: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray

    @property
    def image(self) -> np.ndarray:
        """All channels stacked as float32 (C, Z, Y, X)."""
        return np.stack([c.astype(np.float32) for c in self.images])


def case_spacing(seed: int, number: int) -> tuple[float, float, float]:
    """The (Z, Y, X) spacing of case ``number``: z in 1.5-3.0 mm, in-plane 0.6-0.9 mm."""
    rng = np.random.default_rng([seed, number, 1])
    z, xy = rng.uniform(1.5, 3.0), rng.uniform(0.6, 0.9)
    return (round(float(z), 4), round(float(xy), 4), round(float(xy), 4))


def synthetic_case(number: int = 0, *, size: Sequence[int] = (64, 128, 128), channels: int = 1,
                   organ_fraction: float = 0.03, lesions: int = 3, seed: int = 0,
                   ignore: bool = False, regions: bool = False,
                   median_spacing: Sequence[float] = NOMINAL_SPACING,
                   lesion_spec: LesionSpec = DEFAULT_LESIONS) -> SyntheticCase:
    """Generate case ``number`` in memory; ``size`` is its approximate shape at
    ``median_spacing`` (the dataset writer passes the training cases' median). ``regions``
    gives the BraTS-like values (1 organ, 2 core shell, 3 lesion, ignore 4)."""
    _check(size, channels, organ_fraction, lesions, seed)
    rng = np.random.default_rng([seed, number, 2])
    spacing = np.array(case_spacing(seed, number))
    extent = np.asarray(size) * np.asarray(median_spacing) * rng.uniform(0.87, 1.13, 3)
    shape = tuple(int(v) for v in np.maximum(8, np.rint(extent / spacing)))
    tissue, organ, lesion = anatomy(rng, shape, spacing, organ_fraction, lesions, lesion_spec)
    core = core_shell(organ, lesion, spacing) if regions else None
    label = np.zeros(shape, np.uint8)
    label[organ] = 1
    if core is not None:
        label[core] = 2
    label[lesion] = 3 if regions else 2
    if ignore:  # the slabs keep clear of the lesions (and of their core shells)
        mark_ignore(rng, label, lesion if core is None else lesion | core,
                    value=4 if regions else 3)
    images = [ct_image(rng, tissue, organ, lesion, spacing, core, lesion_spec)]
    if channels == 2:
        images.append(mr_image(rng, tissue, organ, lesion, spacing, core))
    return SyntheticCase(f"synth_{number:03d}", tuple(images), label,
                         tuple(float(s) for s in spacing), oblique_affine(rng, shape, spacing))


def write_synthetic_dataset(out_dir: str | Path, *, cases: int = 8, test_cases: int = 2,
                            size: Sequence[int] = (64, 128, 128), channels: int = 1,
                            organ_fraction: float = 0.03, lesions: int = 3, seed: int = 0,
                            layout: str = "msd", file_ending: str = ".nii.gz",
                            ignore: bool = False, regions: bool = False,
                            lesion_spec: LesionSpec = DEFAULT_LESIONS, held_out: int = 0,
                            progress: Callable[[str], None] | None = None) -> Path:
    """Write a seeded phantom dataset in the MSD layout (default) or nnU-Net v2 raw layout
    and return its directory. Training ids are ``synth_000``...; test ids start at the next
    multiple of 100, so they never collide. ``progress`` is called with each case id written.
    A directory holding an earlier pgps-synth dataset is refreshed (its old case files go);
    any other non-empty directory is refused. ``held_out`` > 0 writes ``splits_final.json``
    (nnU-Net's format) with one fold whose validation cases are the last ``held_out``
    training cases: pgps-train --splits on it never trains on them."""
    _check(size, channels, organ_fraction, lesions, seed)
    out = Path(out_dir)
    if layout not in ("msd", "nnunet") or file_ending not in FILE_ENDINGS:
        raise PGPSInputError(f"{out}: unknown layout {layout!r} or file ending {file_ending!r} "
                             f"(use msd or nnunet, and one of {', '.join(FILE_ENDINGS)})")
    if layout == "msd" and (file_ending != ".nii.gz" or regions):
        raise PGPSInputError(f"{out}: the MSD layout has only .nii.gz files and no regions "
                             "(use --layout nnunet)")
    if cases < 1 or test_cases < 0:
        raise PGPSInputError(f"{out}: need at least one training case and no negative test "
                             "count (fix --cases/--test-cases)")
    if not 0 <= held_out < cases:
        raise PGPSInputError(f"{out}: --held-out {held_out} must leave at least one of the "
                             f"{cases} labelled cases for training")
    _prepare(out)
    train = list(range(cases))
    first_test = 100 * (cases // 100 + 1)
    test = list(range(first_test, first_test + test_cases))
    median = np.median([case_spacing(seed, n) for n in train], axis=0)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for number in train + test:
        case = synthetic_case(number, size=size, channels=channels, organ_fraction=organ_fraction,
                              lesions=lesions, seed=seed, ignore=ignore and number in train,
                              regions=regions, median_spacing=median, lesion_spec=lesion_spec)
        cid, folder = case.case_id, out / ("imagesTr" if number in train else "imagesTs")
        if layout == "msd":  # one file; two channels as one 4D float32 NIfTI, channel last
            both = np.stack(case.images, -1).astype(np.float32)
            _write(folder / f"{cid}.nii.gz", both if channels == 2 else case.images[0], case)
        else:  # one file per channel
            for c, image in enumerate(case.images):
                _write(folder / f"{cid}_{c:04d}{file_ending}", image, case)
        if number in train:
            _write(out / "labelsTr" / f"{cid}{file_ending}", case.label, case)
        if progress is not None:
            progress(cid)
    spec = "" if lesion_spec == DEFAULT_LESIONS else f" {lesion_spec}"
    meta = _dataset_json(layout, train, test, channels, file_ending, ignore, regions,
                         f"{_MARKER} seed={seed} size={tuple(size)} "
                         f"organ_fraction={organ_fraction} lesions={lesions}{spec}")
    if held_out:
        ids = [f"synth_{n:03d}" for n in train]
        split = [{"train": ids[:-held_out], "val": ids[-held_out:]}]
        (out / SPLITS_FILE).write_text(json.dumps(split, indent=4) + "\n")
    (out / "dataset.json").write_text(json.dumps(meta, indent=4) + "\n")
    return out


# ---------------------------------------------------------------- anatomy and intensities


def _check(size: Sequence[int], channels: int, organ_fraction: float, lesions: int,
           seed: int) -> None:
    for bad, problem in (
            (len(size) != 3 or min(size) < 8, f"size {tuple(size)} (give three values >= 8)"),
            (channels not in (1, 2), f"channels={channels} (use 1 or 2)"),
            (not 0 < organ_fraction <= 0.2, f"organ fraction {organ_fraction} (use 0 < F <= 0.2)"),
            (lesions < 0 or seed < 0, f"lesions={lesions}, seed={seed} (use values >= 0)")):
        if bad:
            raise PGPSInputError(f"pgps-synth: {problem}")


def _write(path: Path, array: np.ndarray, case: SyntheticCase) -> None:
    """Write a (Z, Y, X) or (Z, Y, X, C) array in ``case``'s geometry, deterministically."""
    if path.name.endswith(".nii.gz"):
        import nibabel as nib
        data = np.ascontiguousarray(array.transpose(2, 1, 0, *range(3, array.ndim)))
        img = nib.Nifti1Image(data, case.affine)
        img.set_qform(case.affine, code=1)
        img.set_sform(case.affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
        path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=1, mtime=0))
        return
    import SimpleITK as sitk
    lps = np.diag([-1.0, -1.0, 1.0])
    direction = lps @ case.affine[:3, :3] / np.asarray(case.spacing[::-1])
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in case.spacing[::-1]))
    img.SetOrigin(tuple(float(v) for v in lps @ case.affine[:3, 3]))
    img.SetDirection(tuple(float(v) for v in direction.ravel()))
    sitk.WriteImage(img, str(path), useCompression=True)


def _dataset_json(layout: str, train: list[int], test: list[int], channels: int,
                  file_ending: str, ignore: bool, regions: bool, description: str) -> dict:
    names = {str(c): CHANNEL_NAMES[c] for c in range(channels)}
    if layout == "msd":
        labels = {"0": "background", "1": "organ", "2": "lesion"}
        if ignore:
            labels["3"] = "ignore"
        return {
            "name": "PGPSSynthetic", "description": description,
            "reference": "pgps synthetic phantoms", "licence": "CC0", "release": "1.0",
            "tensorImageSize": "4D" if channels == 2 else "3D", "modality": names,
            "labels": labels, "numTraining": len(train), "numTest": len(test),
            "training": [{"image": f"./imagesTr/synth_{n:03d}.nii.gz",
                          "label": f"./labelsTr/synth_{n:03d}.nii.gz"} for n in train],
            "test": [f"./imagesTs/synth_{n:03d}.nii.gz" for n in test],
        }
    nn_labels: dict[str, int | list[int]] = (
        dict(REGION_LABELS) if regions else {"background": 0, "organ": 1, "lesion": 2})
    if ignore:
        nn_labels["ignore"] = 4 if regions else 3
    meta: dict = {"name": "PGPSSynthetic", "description": description,
                  "channel_names": names, "labels": nn_labels,
                  "numTraining": len(train), "file_ending": file_ending}
    if regions:
        meta["regions_class_order"] = list(REGIONS_CLASS_ORDER)
    return meta


def _prepare(out: Path) -> None:
    """Refuse a path that exists, is not empty and is not an earlier pgps-synth output; in
    one that is, remove the old case files so no stale case survives a smaller rerun."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    try:
        ours = json.loads((out / "dataset.json").read_text())["description"].startswith(_MARKER)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        ours = False
    if not ours:
        raise PGPSInputError(f"{out}: exists, is not empty and holds no pgps-synth dataset "
                             "(choose a new or empty directory)")
    for f in sorted(out.glob("images*/synth_*")) + sorted(out.glob("labelsTr/synth_*")):
        f.unlink()
