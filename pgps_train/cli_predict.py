"""``pgps-predict MODEL_DIR INPUT_DIR OUT_DIR``: label maps in each input's own geometry.

INPUT_DIR holds raw NIfTI/NRRD/MHA files shaped like the training data: one file per case
(3D, or 4D channels-last for a multi-channel model: the MSD style) or one 3D file per
channel named ``<id>_<channel:04d><ending>`` (the nnU-Net style). A file named like a
channel file is always read as one (so a one-channel ``<id>_0000.nii.gz`` predicts
``<id>``). Each case gives ``OUT_DIR/<id><ending>`` with the ending and exact geometry of
its first input file (NIfTI qform/sform and codes, or ITK origin/spacing/direction);
``--save-probabilities`` adds ``<id>.npz`` (key ``probabilities``, (K, Z, Y, X) float16
in source geometry, compressed, no pickle) and ``<id>.json`` (what each channel stands
for). ``OUT_DIR/labels.json`` records the labels for ``pgps-evaluate``.

A bad case prints one line and the others go on (exit 1); a bad model or folder is
exit 2. Never a traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import traceback
from pathlib import Path

import numpy as np

from pgps_data.errors import PGPSInputError
from pgps_data.ingest.readers import file_ending, write_volume

PROG = "pgps-predict"
_CHANNEL_FILE = re.compile(r"(.+)_(\d{4})")


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Predict label maps for raw images with a trained pgps model; outputs "
        "share each input's exact geometry.",
    )
    p.add_argument("model_dir", help="folder with model.json and checkpoint_final.pt")
    p.add_argument("input_dir", help="raw images: <id><ending> (4D for several channels) "
                   "or <id>_<channel:04d><ending>")
    p.add_argument("out_dir", help="where <id><ending> label maps are written")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write <id>.npz (float16 probabilities) and <id>.json")
    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (8 flips)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (0.5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 ok, 1 some case failed, 2 unusable)."""
    import torch

    from pgps_train import inference

    args = build_parser().parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        if device == "cuda" and not torch.cuda.is_available():
            raise PGPSInputError("--device cuda: no CUDA device is available (use --device cpu)")
        if not 0 <= args.overlap < 1:
            raise PGPSInputError(f"--overlap {args.overlap}: must lie in [0, 1)")
        model, config = inference.load_model(args.model_dir, device=device)
        cases, problems = find_cases(args.input_dir, len(config["channel_names"]))
        if not cases and not problems:
            raise PGPSInputError(f"{args.input_dir}: no image files found (.nii.gz, .nrrd, .mha...)")
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "labels.json", {
            key: config.get(key) for key in ("labels", "ignore_label", "regions_class_order")
        })
    except (PGPSInputError, OSError) as exc:
        print(f"{PROG}: error: {_line(exc)}", file=sys.stderr)
        return 2
    for line in problems:
        print(f"{PROG}: error: {line}", file=sys.stderr)
    failed = len(problems)
    for case_id, paths in _progress(list(cases.items()), args.quiet):
        try:
            _predict_one(inference, model, config, case_id, paths, out, args, device)
        except Exception as exc:  # noqa: BLE001 - one line per bad case, the others go on
            failed += 1
            print(f"{PROG}: error: {_line(exc, paths[0])}", file=sys.stderr)
    done = len(cases) - (failed - len(problems))
    print(f"{done} case(s) predicted, {failed} failed → {out}")
    return 1 if failed else 0


def _predict_one(inference, model, config, case_id, paths, out, args, device) -> None:  # noqa: ANN001
    label, probs, geometry = inference.predict_case(
        model, config, paths, mirror=args.tta, device=device, overlap=args.overlap,
        return_probabilities=args.save_probabilities,
    )
    ending = file_ending(paths[0]) or ".nii.gz"
    write_volume(out / f"{case_id}{ending}", label, geometry, np.uint8)
    if probs is not None:
        np.savez_compressed(out / f"{case_id}.npz", probabilities=probs.astype(np.float16))
        regions = inference.has_regions(config["labels"])
        _write_json(out / f"{case_id}.json", {
            "case_id": case_id,
            "nonlinearity": "sigmoid" if regions else "softmax",
            "channels": inference.output_values(config),  # label value (or region) per channel
            "regions_class_order": config.get("regions_class_order") if regions else None,
            "shape": list(label.shape),
        })


def _progress(items: list, quiet: bool):  # noqa: ANN202
    if quiet or not items:
        yield from items
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("predicting", total=len(items))
        for item in items:
            bar.update(task, description=f"predicting {item[0]}")
            yield item
            bar.advance(task)


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


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
