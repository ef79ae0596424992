"""``pgps-compare RUN_DIR ...``: tabulate finished pgps-train runs side by side.

Runnable as ``python -m pgps_train.cli.compare``.
"""

from __future__ import annotations

import argparse
import json
import sys

from pgps_data.errors import PGPSInputError
from pgps_train.compare import comparison, load_runs, print_comparison


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pgps-compare", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders made by pgps-train")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = p.parse_args(argv)
    try:
        rows = comparison(load_runs(args.runs))
    except PGPSInputError as exc:
        print(f"pgps-compare: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print_comparison(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
