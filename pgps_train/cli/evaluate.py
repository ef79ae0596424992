"""``pgps-evaluate PRED_DIR LABEL_DIR``: per-label Dice of predicted label maps (nnU-Net's rules).

Runnable as ``python -m pgps_train.cli.evaluate``. Exit status 0 ok, 1 predictions and labels
do not match (without ``--allow-missing``), 2 another user error (one line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pgps_data.console import protect_output
from pgps_data.errors import PGPSInputError
from pgps_data.labels import Labels
from pgps_data.store.atomic_write import write_atomic
from pgps_train.evaluate import (
    PROG,
    TOOL,
    MissingCasesError,
    evaluate_folder,
    json_ready,
    mismatch_line,
    print_table,
)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: 0 ok, 1 predictions and labels do not match (without
    ``--allow-missing``), 2 on another user error (one line, no traceback)."""
    protect_output()
    p = argparse.ArgumentParser(prog=PROG, description="Per-label Dice of predicted label maps "
                                "against reference labels (nnU-Net's rules).")
    p.add_argument("pred_dir", help="predicted label maps <id><ending>")
    p.add_argument("label_dir", help="reference label maps <id><ending>")
    p.add_argument("--labels", metavar="JSON", help="dataset.json (MSD or nnU-Net) with the "
                   "labels (default: PRED_DIR/labels.json from pgps-predict)")
    p.add_argument("--json", metavar="OUT", help="where to write the results "
                   "(default: PRED_DIR/summary.json)")
    p.add_argument("--file-ending", help="only files with this ending (e.g. .nii.gz)")
    p.add_argument("--allow-missing", action="store_true",
                   help="score the matched cases when some label has no prediction (or some "
                   "prediction no label); the JSON lists them (default: refuse, exit 1)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an --json file that is not an earlier pgps-evaluate result")
    args = p.parse_args(argv)
    try:
        source = Path(args.labels) if args.labels else Path(args.pred_dir) / "labels.json"
        if not source.is_file():
            raise PGPSInputError(f"{source}: missing (give --labels dataset.json)")
        labels = Labels.from_json_file(source)
        out = Path(args.json) if args.json else Path(args.pred_dir) / "summary.json"
        _check_replaceable(out, args.overwrite)
        results = evaluate_folder(args.pred_dir, args.label_dir, labels,
                                  file_ending=args.file_ending, allow_missing=args.allow_missing)
        _write_results(out, {"tool": TOOL, **json_ready(results)})
    except MissingCasesError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except (PGPSInputError, OSError) as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if results["missing"] or results["unlabelled"]:
        what = mismatch_line(args.pred_dir, args.label_dir, results["missing"], results["unlabelled"])
        print(f"{PROG}: warning: {what}; scored the {len(results['per_case'])} matched case(s), "
              f"all listed in {out}", file=sys.stderr)
    print_table(results)
    print(f"results → {out}")
    return 0


def _check_replaceable(path: Path, overwrite: bool) -> None:
    """Refuse to replace a file that is not an earlier pgps-evaluate result (or a folder)."""
    if path.is_dir():
        raise PGPSInputError(f"{path}: is a directory (give a file name with --json)")
    if overwrite or not os.path.lexists(path):
        return
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    # ours: marked, or shaped like a result of the versions before the mark
    ours = isinstance(doc, dict) and (doc.get("tool") == TOOL or {
        "per_case", "mean", "foreground_mean"} <= set(doc))
    if not ours:
        raise PGPSInputError(f"{path}: exists and is not a pgps-evaluate result; give another "
                             "--json file or --overwrite to replace it")


def _write_results(path: Path, doc: Mapping[str, Any]) -> None:
    """Write the JSON atomically (temporary file beside it, then rename)."""
    write_atomic(path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))


if __name__ == "__main__":
    raise SystemExit(main())
