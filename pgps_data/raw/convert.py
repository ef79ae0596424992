"""`pgps-convert`: an MSD or nnU-Net v2 raw dataset into one pgps zarr v3 store.

    pgps-convert RAW_DIR OUT.zarr [--spacing Z Y X] [--workers N] [--scheduler ADDRESS]
                 [--codec default|none] [--overwrite]

Two passes, one dask task per case each: the statistics pass (spacing, shapes, CT
foreground intensities) runs over every training case before anything is written, then
the conversion pass preprocesses and writes each case (crop → normalise → resample,
nnU-Net's order) with its foreground indices. Bad cases are reported one line each and
skipped; the others are converted and the exit status is non-zero. A rerun after a crash
skips complete cases and finishes the rest.

The whole conversion holds the store's exclusive lock (:mod:`pgps_data.store.lock`; with
``--scheduler`` this process, the client, holds it), so a second run into the same store
refuses with one line naming the holder. Ctrl-C and SIGTERM stop it with one line (exit
130 / 143), its worker processes with it, and leave the store resumable.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pgps_data.errors import PGPSInputError
from pgps_data.interrupts import workers_stopped_on_interrupt
from pgps_data.raw.cases import convert_case, fingerprint_case
from pgps_data.raw.layouts import DatasetSpec, discover
from pgps_data.raw.parallel import run_per_case, worker_pool
from pgps_data.raw.preprocess import (
    samples_per_case,
    target_spacing,
    use_mask_for_norm,
)
from pgps_data.store.chunking import check_codec, layout_attrs
from pgps_data.store.lock import store_lock
from pgps_data.store.remote import local_path
from pgps_data.store.write import (
    RESUME,
    case_is_complete,
    check_target,
    create_root,
    ensure_case_groups,
    finish_store,
)

INTERRUPTED = f"interrupted; {RESUME}"


def convert(
    raw_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    spacing: tuple[float, float, float] | None = None,
    workers: int = 1,
    scheduler: str | None = None,
    codec: str = "default",
    overwrite: bool = False,
    quiet: bool = False,
    log=print,  # noqa: ANN001
) -> dict[str, Any]:
    """Convert a raw dataset folder into the store ``out``; returns a summary dict.

    The summary has ``converted``, ``skipped`` (already complete), ``errors`` (one line
    each) and ``layout``. Raises PGPSInputError when the dataset as a whole is unusable.
    """
    # OUT absolute: dask.distributed workers resolve a relative path against their own
    # working folder, which is not where the client checked and locked the store.
    if local_path(out) is None:
        raise PGPSInputError(
            f"{out}: stores are written on a local (POSIX) path: convert to one, then "
            "pgps-upload it to the URL")
    if local_path(raw_dir) is None:
        raise PGPSInputError(f"{raw_dir}: the raw dataset must be a local folder")
    raw_dir, out = local_path(raw_dir).resolve(), local_path(out).absolute()  # type: ignore[union-attr]
    check_codec(codec)
    real_out = out.resolve()
    if real_out == raw_dir or real_out in raw_dir.parents:  # the raw data given twice
        raise PGPSInputError(
            f"{out}: is the raw dataset folder {raw_dir} or holds it; choose an output path "
            "outside the raw data (nothing was written)"
        )
    spec = discover(raw_dir)
    log(
        f"Detected {spec.layout.upper()} layout in {raw_dir}: {len(spec.training)} training "
        f"and {len(spec.test)} test cases, {len(spec.channel_names)} channel(s) "
        f"{spec.modalities}, labels {spec.labels}"
    )
    for line in spec.warnings:
        log(f"warning: {line}")
    for line in spec.problems:
        log(f"error: {line}")

    fingerprint = _inputs_fingerprint(spec, spacing, codec)
    check_target(out, fingerprint, overwrite=overwrite)  # before the lock file is made
    with store_lock(out):
        # again: now nobody else writes, and its answer (continue or start) is final
        previous = check_target(out, fingerprint, overwrite=overwrite)
        return _convert_locked(spec, out, fingerprint, previous, spacing=spacing,
                               workers=workers, scheduler=scheduler, codec=codec,
                               quiet=quiet, log=log)


def _convert_locked(spec: DatasetSpec, out: Path, fingerprint: str, previous: dict | None, *,
                    spacing, workers: int, scheduler: str | None, codec: str,  # noqa: ANN001
                    quiet: bool, log) -> dict[str, Any]:  # noqa: ANN001
    """Both passes and the root's summary, with the store's lock held.

    ``previous`` is the root to continue (:func:`~pgps_data.store.write.check_target`),
    or None: a new root is written once the statistics pass found a usable case.
    """
    errors: list[str] = list(spec.problems)
    with workers_stopped_on_interrupt(worker_pool(workers, scheduler)) as pool:
        run = functools.partial(run_per_case, workers=workers, scheduler=scheduler,
                                quiet=quiet, pool=pool)
        if previous is not None:
            plan = previous["plan"]
            kept = set(previous["training_cases"])
            good_training = [c for c in spec.training if c.case_id in kept]
            stat_errors = list(previous.get("excluded_cases", []))
            ensure_case_groups(out)
            log(f"Continuing {out}: statistics from the first run are reused")
        else:
            good_training, plan, stat_errors = _statistics(spec, spacing, codec, run)
        errors += stat_errors
        for line in stat_errors:
            log(f"error: {line}")
        if previous is None:
            if not good_training:
                raise _no_training_case(spec, stat_errors)
            attrs = _store_attrs(spec, plan, fingerprint, [c.case_id for c in good_training])
            create_root(out, {**attrs, "excluded_cases": stat_errors})

        cases = good_training + spec.test
        todo = [c for c in cases if not case_is_complete(out, c.case_id, c.is_test)]
        skipped = len(cases) - len(todo)
        if skipped:
            log(f"Skipping {skipped} complete case(s)")
        results = run(convert_case, [(spec, c, out, plan) for c in todo],
                      description="converting")
    converted = 0
    for res in results:
        if "error" in res:
            errors.append(res["error"])
            log(f"error: {res['error']}")
        else:
            converted += 1
    full = [line for line in errors if line.startswith(f"{out}: disk full")]
    if full:  # every later case would fail the same way: one line, the store resumable
        raise PGPSInputError(full[0])
    finish_store(out, {"foreground_fraction": _foreground_fraction(out)})
    return {
        "layout": spec.layout,
        "converted": converted,
        "skipped": skipped,
        "errors": errors,
        "store": str(out),
    }


def _no_training_case(spec: DatasetSpec, stat_errors: list[str]) -> PGPSInputError:
    """Every training case was refused (each one's reason is logged): one summary line."""
    refused = len(stat_errors) + len(spec.problems)  # discover's lines were logged first
    if not refused:
        return PGPSInputError(f"{spec.root}: no training case found; nothing was written")
    return PGPSInputError(
        f"{spec.root}: no usable training case: {refused} case(s) refused, one line each "
        "above; fix them and rerun; nothing was written"
    )


def _statistics(spec: DatasetSpec, spacing, codec: str, run):  # noqa: ANN001
    """The statistics pass: target spacing and CT intensity statistics of the dataset."""
    per_case = samples_per_case(max(1, len(spec.training)))
    results = run(fingerprint_case, [(spec, c, per_case) for c in spec.training],
                  description="statistics")
    errors = [r["error"] for r in results if "error" in r]
    ok = {r["case_id"]: r for r in results if "error" not in r}
    good = [c for c in spec.training if c.case_id in ok]
    if not good:  # every case refused: the caller prints each reason, not a CT message
        return good, {}, errors
    stats: dict[str, Any] = {}
    for ch, modality in enumerate(spec.modalities):
        if modality.upper() == "CT":
            stats[str(ch)] = stats_from_histograms([ok[c.case_id]["samples"][ch] for c in good])
    if spacing is None and ok:
        tgt = target_spacing(
            [ok[c.case_id]["spacing"] for c in good],
            shapes_after_crop=[ok[c.case_id]["shape"] for c in good],
        )
    else:
        tgt = spacing
    plan = {
        "target_spacing": [float(s) for s in tgt] if tgt is not None else None,
        "intensity_stats": stats,
        "use_mask_for_norm": bool(
            ok and use_mask_for_norm([ok[c.case_id]["crop_ratio"] for c in good])
        ),
        "codec": codec,
    }
    return good, plan, errors


def stats_from_histograms(hists: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """:func:`~pgps_data.raw.preprocess.compute_intensity_stats` of the concatenated
    samples, computed from their (values, counts) histograms: the same mean, std, min, max
    and linearly interpolated percentiles as numpy on the full sample (to float rounding)."""
    hists = [(np.asarray(v, np.float64), np.asarray(n, np.int64)) for v, n in hists]
    hists = [(v, n) for v, n in hists if n.sum() > 0]
    if not hists:
        raise PGPSInputError(
            "dataset: no foreground voxels in any training case; CT normalisation needs "
            "labelled foreground (check the labels)"
        )
    values, inverse = np.unique(np.concatenate([v for v, _ in hists]), return_inverse=True)
    counts = np.bincount(inverse.ravel(), weights=np.concatenate([n for _, n in hists]))
    counts = np.rint(counts).astype(np.int64)
    total = int(counts.sum())
    cum = np.cumsum(counts)
    mean = float(np.dot(values, counts) / total)
    std = float(np.sqrt(np.dot((values - mean) ** 2, counts) / total))

    def percentile(q: float) -> float:  # numpy's "linear" method, its _lerp included
        pos = q / 100 * (total - 1)
        lo = int(np.floor(pos))
        t = pos - lo
        a = values[np.searchsorted(cum, lo, side="right")]
        b = values[np.searchsorted(cum, min(lo + 1, total - 1), side="right")]
        return float(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)

    return {
        "mean": mean, "std": std, "median": percentile(50.0),
        "min": float(values[0]), "max": float(values[-1]),
        "percentile_00_5": percentile(0.5), "percentile_99_5": percentile(99.5),
    }


def _store_attrs(spec: DatasetSpec, plan, fingerprint: str, training: list[str]) -> dict:  # noqa: ANN001
    import numcodecs
    import zarr

    import pgps_data

    return {
        "dataset_name": spec.name,
        "source_root": str(spec.root),
        "source_layout": spec.layout,
        **spec.label_set.to_dict(),  # labels, label_values, ignore_label, regions_class_order
        "channel_names": spec.channel_names,
        "modalities": spec.modalities,
        "target_spacing": plan["target_spacing"],
        "intensity_statistics": plan["intensity_stats"],
        "layout": layout_attrs(plan["codec"]),
        "plan": plan,
        "training_cases": training,
        "inputs_fingerprint": fingerprint,
        "created_by": {
            "pgps": getattr(pgps_data, "__version__", "0"),
            "zarr": zarr.__version__,
            "numcodecs": numcodecs.__version__,
            "numpy": np.__version__,
        },
    }


def _inputs_fingerprint(spec: DatasetSpec, spacing, codec: str) -> str:  # noqa: ANN001
    """Hash of dataset.json, every case file's name and size, and the options."""
    h = hashlib.sha256()
    root = Path(spec.root)
    h.update((root / "dataset.json").read_bytes())
    for case in sorted(spec.training + spec.test, key=lambda c: (c.is_test, c.case_id)):
        for p in [*case.image_paths, case.label_path]:
            if p is not None:
                size = os.path.getsize(p) if os.path.exists(p) else -1
                h.update(f"{Path(p).relative_to(root)}:{size};".encode())
    h.update(json.dumps({"spacing": spacing, "codec": codec}).encode())
    return h.hexdigest()[:32]


def _foreground_fraction(out: Path) -> dict[str, float]:
    from pgps_data.store.store import open_store

    store = open_store(out)
    totals: dict[str, int] = {}
    voxels = 0
    for case in store:
        voxels += int(case.meta["voxels"])
        for v, n in case.meta["label_counts"].items():
            totals[v] = totals.get(v, 0) + int(n)
    return {v: (n / voxels if voxels else 0.0) for v, n in sorted(totals.items())}
