"""``pgps-inspect STORE [--json] [--verify]``: describe a pgps store, optionally verify every chunk.

Runnable as ``python -m pgps_data.cli.inspect``. ``--verify`` exits 1 if any chunk or case
checksum is bad.
"""

from __future__ import annotations

import argparse
import json
import sys

from pgps_data.console import progress_console, protect_output
from pgps_data.errors import PGPSInputError
from pgps_data.store.describe import describe, print_table
from pgps_data.store.store import Store, open_store


def main(argv: list[str] | None = None) -> int:
    protect_output()
    p = argparse.ArgumentParser(prog="pgps-inspect", description="Describe a pgps store.")
    p.add_argument("store", help="a store made by pgps-convert")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument(
        "--verify",
        action="store_true",
        help="read every chunk of every array and check its crc32c checksum; "
        "exit status 1 if any chunk is bad",
    )
    args = p.parse_args(argv)
    try:
        store = open_store(args.store)
        desc = describe(store)
    except PGPSInputError as exc:
        print(f"pgps-inspect: error: {exc}", file=sys.stderr)
        return 2
    if args.json and not args.verify:
        print(json.dumps(desc, indent=2))
    elif not args.json:
        print_table(desc)
    if not args.verify:
        return 0
    result = _verify(store, quiet=args.json)
    if args.json:
        print(json.dumps({**desc, "verify": result.as_dict()}, indent=2))
    else:
        print(result.summary())
    return 0 if result.ok else 1


def _verify(store: Store, quiet: bool):  # noqa: ANN202
    """Run :func:`verify_store` with a progress bar on stderr; bad lines printed as found."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from pgps_data.store.verify import array_count, verify_store

    def say(line: str) -> None:
        if not quiet:
            print(f"bad: {line}", flush=True)

    columns = (TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), TextColumn("arrays"))
    with Progress(*columns, console=progress_console(), transient=True) as bar:
        task = bar.add_task("verify", total=array_count(store))
        return verify_store(store, lambda n: bar.advance(task, n), say)


if __name__ == "__main__":
    raise SystemExit(main())
