"""``pgps-convert RAW_DIR OUT``: an MSD task or nnU-Net raw dataset → a pgps zarr v3 store.

Runnable as ``python -m pgps_data.cli.convert``. Bad input is one line and exit status 2;
failed cases are listed and give exit status 1; Ctrl-C / SIGTERM stop cleanly (130 / 143).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from pgps_data.console import protect_output
from pgps_data.errors import PGPSInputError
from pgps_data.interrupts import Interrupted, interrupts_as_exit
from pgps_data.raw.convert import INTERRUPTED, convert
from pgps_data.store.chunking import CODECS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pgps-convert",
        description="Convert an MSD task folder or an nnU-Net v2 raw dataset into a pgps "
        "zarr v3 store (preprocessed cases + foreground indices).",
    )
    p.add_argument("raw_dir", help="MSD task folder or nnU-Net v2 raw dataset folder")
    p.add_argument("out", help="output store, e.g. Task.zarr")
    p.add_argument("--spacing", nargs=3, type=float, metavar=("Z", "Y", "X"),
                   help="target spacing in mm (default: the dataset's median spacing)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="worker processes on the local scheduler (default: cores, max 8)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="a dask.distributed scheduler address (tcp://host:8786)")
    p.add_argument("--codec", choices=CODECS, default="default",
                   help="chunk compression: default (chosen by benchmark) or none")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an existing store at OUT and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    protect_output()  # a closed stdout (| head, a dead log pipe) must not end the job
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        with interrupts_as_exit("pgps-convert", INTERRUPTED):
            summary = convert(
                args.raw_dir,
                args.out,
                spacing=tuple(args.spacing) if args.spacing else None,
                workers=args.workers,
                scheduler=args.scheduler,
                codec=args.codec,
                overwrite=args.overwrite,
                quiet=args.quiet,
            )
    except PGPSInputError as exc:
        print(f"pgps-convert: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print(f"pgps-convert: {INTERRUPTED}", file=sys.stderr)
        return stop.code
    dt = time.perf_counter() - t0
    n_err = len(summary["errors"])
    print(
        f"{summary['converted']} case(s) converted, {summary['skipped']} already complete, "
        f"{n_err} failed, in {dt:.1f} s → {summary['store']}"
    )
    if n_err:
        print(f"pgps-convert: {n_err} case(s) failed:", file=sys.stderr)
        for line in summary["errors"]:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
