"""``pgps-upload STORE URL [--verify full|sizes]``: copy a finished store to object storage.

Runnable as ``python -m pgps_data.cli.upload``. The root (case index, ``complete``) goes
last and every file is verified before it (:mod:`pgps_data.store.upload`); rerunning after
an interruption continues. Exit 2 with one line on bad input, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys

from pgps_data.console import protect_output
from pgps_data.errors import PGPSInputError
from pgps_data.store.upload import upload


def main(argv: list[str] | None = None) -> int:
    protect_output()
    p = argparse.ArgumentParser(
        prog="pgps-upload",
        description="Upload a finished pgps store to s3://, gs:// or file:// (read it "
        "back with any pgps command given the URL).")
    p.add_argument("store", help="a complete local store made by pgps-convert")
    p.add_argument("url", help="an empty target prefix, e.g. s3://bucket/Task04.zarr")
    p.add_argument("--verify", choices=("full", "sizes"), default="full",
                   help="full: read every file back and compare sha256 (default); "
                   "sizes: compare sizes only")
    args = p.parse_args(argv)
    try:
        upload(args.store, args.url, verify=args.verify,
               log=lambda line: print(line, file=sys.stderr))
    except PGPSInputError as exc:
        print(f"pgps-upload: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pgps-upload: interrupted; rerun the same command to continue (the store "
              "does not open at the URL until its root is uploaded, last)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
