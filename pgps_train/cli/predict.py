"""``pgps-predict MODEL_DIR INPUT_DIR OUT_DIR``: label maps in each input's own geometry.

INPUT_DIR holds raw NIfTI/NRRD/MHA files shaped like the training data: one file per case
(3D, or 4D channels-last for a multi-channel model: the MSD style) or one 3D file per
channel named ``<id>_<channel:04d><ending>`` (the nnU-Net style). A file named like a
channel file is always read as one (so a one-channel ``<id>_0000.nii.gz`` predicts
``<id>``). Each case gives ``OUT_DIR/<id><ending>`` with the ending and exact geometry of
its first input file (NIfTI qform/sform and codes, or ITK origin/spacing/direction);
``--save-probabilities`` adds ``<id>.npz`` (key ``probabilities``, (K, Z, Y, X) float16
in source geometry, compressed, no pickle) and ``<id>.json`` (what each channel stands
for). ``OUT_DIR/labels.json`` records the labels for ``pgps-evaluate``. Detached-header
inputs (``.nhdr``, ``.mhd``: a header plus a data file) give the single-file form of the
same format (``.nrrd``, ``.mha``), so every output is one file written atomically.

OUT_DIR is never INPUT_DIR nor inside it, and pgps-predict replaces only the files its
manifest ``OUT_DIR/.pgps-predict.json`` lists unchanged (a rerun replaces its own outputs);
anything else at an output's name is refused unless ``--overwrite``
(:mod:`pgps_train.predict_output` has the rules and why).

A bad case prints one line and the others go on (exit 1); a bad model or folder, or a
file that may not be replaced, is exit 2 before anything is predicted. Ctrl-C or SIGTERM
keeps the finished outputs (exit 130 / 143). Never a traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import traceback
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from pgps_data.console import progress_console, protect_output
from pgps_data.errors import PGPSInputError
from pgps_data.interrupts import Interrupted, interrupts_as_exit, raise_if_interrupted
from pgps_data.raw.readers import file_ending, write_volume
from pgps_train.devices import DEVICE_METAVAR, choose_device, device_arg
from pgps_train.predict_output import MANIFEST, OutputDir, check_locations, is_disk_full

PROG = "pgps-predict"
LABELS_JSON = "labels.json"
_CHANNEL_FILE = re.compile(r"(.+)_(\d{4})")
_SINGLE_FILE = {".nhdr": ".nrrd", ".mhd": ".mha"}  # detached header → the one-file form


def find_cases(input_dir: str | Path, channels: int) -> tuple[dict[str, list[str]], list[str]]:
    """Group INPUT_DIR's image files into cases: ({id: [paths by channel]}, problems).

    Problems are one line each (a case with missing or extra channel files, or a
    multi-channel model given a lone file that is not 4D is caught later, when read).
    Hidden files and unrecognised endings are ignored.
    """
    folder = Path(input_dir)
    if not folder.is_dir():
        raise PGPSInputError(f"{folder}: not a directory (give the folder of input images)")
    singles: dict[str, str] = {}
    groups: dict[str, dict[int, str]] = {}
    for path in sorted(folder.iterdir()):
        ending = file_ending(path)
        if ending is None or path.name.startswith(".") or not path.is_file():
            continue
        stem = path.name[: -len(ending)]
        m = _CHANNEL_FILE.fullmatch(stem)
        if m:
            groups.setdefault(m.group(1), {})[int(m.group(2))] = str(path)
        else:
            singles[stem] = str(path)
    cases: dict[str, list[str]] = {}
    problems: list[str] = []
    for case_id, chans in groups.items():
        if sorted(chans) != list(range(channels)):
            problems.append(f"{folder}/{case_id}_XXXX: channel files {sorted(chans)} found, the "
                            f"model needs 0..{channels - 1}; case skipped")
        elif case_id in singles:
            problems.append(f"{singles[case_id]}: case {case_id!r} also has channel files; "
                            "both skipped")
        else:
            cases[case_id] = [chans[c] for c in range(channels)]
    for case_id, path in singles.items():
        if case_id not in groups:
            cases[case_id] = [path]
    return dict(sorted(cases.items())), problems


def output_names(case_id: str, first_path: str | Path, probabilities: bool) -> list[str]:
    """The files a case writes in OUT_DIR: the label map, then ``.npz`` and ``.json``."""
    ending = file_ending(first_path) or ".nii.gz"
    names = [f"{case_id}{_SINGLE_FILE.get(ending, ending)}"]
    return names + ([f"{case_id}.npz", f"{case_id}.json"] if probabilities else [])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Predict label maps for raw images with a trained pgps model; outputs "
        "share each input's exact geometry.",
    )
    p.add_argument("model_dir", help="folder with model.json and checkpoint_final.pt")
    p.add_argument("input_dir", help="raw images: <id><ending> (4D for several channels) "
                   "or <id>_<channel:04d><ending>")
    p.add_argument("out_dir", help="where <id><ending> label maps are written (not INPUT_DIR "
                   "nor inside it)")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write <id>.npz (float16 probabilities) and <id>.json")
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace files at the output names that pgps-predict did not write "
                   f"(default: refuse; its own, listed in OUT_DIR/{MANIFEST}, are replaced)")
    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (8 flips)")
    p.add_argument("--device", type=device_arg, metavar=DEVICE_METAVAR, default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (0.5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 ok, 1 some case failed, 2 unusable,
    130 / 143 interrupted by Ctrl-C / SIGTERM)."""
    protect_output()
    args = build_parser().parse_args(argv)
    kept = f"finished outputs in {args.out_dir} are kept, rerun to predict the rest"
    try:
        # SIGINT/SIGTERM unwind through _run, so temporary files are removed and the
        # finished outputs stay listed in the manifest.
        with interrupts_as_exit(PROG, f"error: stopped at once; {kept}"):
            return _run(args)
    except Interrupted as stop:
        how = "terminated" if stop.code == 128 + signal.SIGTERM else "interrupted"
        print(f"{PROG}: error: {how}; {kept}", file=sys.stderr)
        return stop.code


def _run(args: argparse.Namespace) -> int:
    from pgps_train import inference

    with ExitStack() as stack:
        try:
            device = choose_device(args.device)
            if not 0 <= args.overlap < 1:
                raise PGPSInputError(f"--overlap {args.overlap}: must lie in [0, 1)")
            check_locations(args.input_dir, args.out_dir)  # before anything is loaded or made
            model, config = inference.load_model(
                args.model_dir, device=device,
                log=lambda msg: print(f"{PROG}: warning: {msg}", file=sys.stderr))
            cases, problems = find_cases(args.input_dir, len(config["channel_names"]))
            if not cases and not problems:
                raise PGPSInputError(f"{args.input_dir}: no image files found (.nii.gz, .nrrd, .mha...)")
            names, clashes = _plan(cases, args.save_probabilities)
            problems += clashes
            out = stack.enter_context(OutputDir(
                args.out_dir, input_files=[p for ps in cases.values() for p in ps],
                model_dir=args.model_dir, overwrite=args.overwrite))
            if out.unlocked:
                print(f"{PROG}: warning: {out.root}: this filesystem has no file locks; do not "
                      "run two pgps-predict into this folder at once", file=sys.stderr)
            out.check([LABELS_JSON, *(n for case in names.values() for n in case)])
            labels = inference.model_labels(config)
            out.write(LABELS_JSON, lambda tmp: _write_json(tmp, labels.to_dict()))
        except (PGPSInputError, OSError) as exc:
            print(f"{PROG}: error: {_line(exc)}", file=sys.stderr)
            return 2
        for line in problems:
            print(f"{PROG}: error: {line}", file=sys.stderr)
        done, failed = 0, len(problems)
        todo = [(cid, cases[cid]) for cid in names]
        bar = _progress(todo, args.quiet)
        try:
            for i, (case_id, paths) in enumerate(bar):
                raise_if_interrupted()
                try:
                    _predict_one(inference, model, config, case_id, paths, names[case_id], out,
                                 args, device)
                    done += 1
                except Exception as exc:  # noqa: BLE001 - one line per bad case, the others go on
                    failed += 1
                    if is_disk_full(exc):
                        failed += len(todo) - i - 1
                        print(f"{PROG}: error: {out.root}: no space left while writing case "
                              f"{case_id!r}; stopped with {len(todo) - i} case(s) not predicted "
                              "(free some space and rerun; finished outputs are kept)",
                              file=sys.stderr)
                        break
                    print(f"{PROG}: error: {_line(exc, paths[0])}", file=sys.stderr)
        finally:
            bar.close()
    print(f"{done} case(s) predicted, {failed} failed → {out.root}")
    return 1 if failed else 0


def _plan(cases: dict[str, list[str]], probabilities: bool) -> tuple[dict[str, list[str]], list[str]]:
    """Output names per case, and one problem line per case whose names clash with
    pgps-predict's own files (``labels.json``, the manifest): such a case is skipped."""
    names: dict[str, list[str]] = {}
    problems: list[str] = []
    for case_id, paths in cases.items():
        case_names = output_names(case_id, paths[0], probabilities)
        clash = next((n for n in case_names if n in (LABELS_JSON, MANIFEST)), None)
        if clash:
            problems.append(f"{paths[0]}: case {case_id!r} would write {clash}, pgps-predict's "
                            "own file; case skipped (rename the input)")
        else:
            names[case_id] = case_names
    return names, problems


def _predict_one(inference, model, config, case_id, paths, names, out, args, device) -> None:  # noqa: ANN001
    label, probs, geometry = inference.predict_case(
        model, config, paths, mirror=args.tta, device=device, overlap=args.overlap,
        return_probabilities=args.save_probabilities,
    )
    out.write(names[0], lambda tmp: write_volume(tmp, label, geometry, np.uint8), case_id=case_id)
    if probs is not None:
        def write_npz(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: numpy adds no second ".npz"
                np.savez_compressed(fh, probabilities=probs.astype(np.float16))

        out.write(names[1], write_npz, case_id=case_id)
        labels = inference.model_labels(config)
        out.write(names[2], lambda tmp: _write_json(tmp, {
            "case_id": case_id,
            "nonlinearity": labels.nonlinearity,
            "channels": labels.output_channels,  # label value (or region) per channel
            "regions_class_order": labels.regions_class_order if labels.has_regions else None,
            "shape": list(label.shape),
        }), case_id=case_id)


def _progress(items: list, quiet: bool) -> Iterator:
    if quiet or not items:
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=progress_console(), transient=True) as bar:
        task = bar.add_task("predicting", total=len(items))
        for item in items:
            bar.update(task, description=f"predicting {item[0]}")
            yield item
            bar.advance(task)


def _write_json(path: Path, obj: object) -> None:
    Path(path).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _line(exc: BaseException, where: str | None = None) -> str:
    """One line for any failure: a PGPSInputError as is, others with type and place."""
    if isinstance(exc, PGPSInputError):
        return str(exc)
    tb = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" at {Path(tb.filename).name}:{tb.lineno}" if tb else ""
    msg = " ".join(str(exc).split())[:300]
    return f"{where or ''}{': ' if where else ''}{type(exc).__name__}: {msg}{at}"


if __name__ == "__main__":
    sys.exit(main())
