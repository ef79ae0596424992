"""`make demo`: the main job on embedded synthetic data, ending in a result table.

Until the trainer lands this runs synth → convert → inspect and prints the store table.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from pgps_data.ingest.convert import convert
from pgps_data.inspect import describe, print_table
from pgps_data.store import open_store
from pgps_data.synthetic import write_synthetic_dataset


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="pgps-demo-"))
    t0 = time.perf_counter()
    raw = write_synthetic_dataset(work / "Task01_Synth", cases=8, test_cases=2,
                                  size=(48, 96, 96), seed=0)
    print(f"[1/3] synthetic MSD dataset → {raw} ({time.perf_counter() - t0:.1f} s)")
    t1 = time.perf_counter()
    summary = convert(raw, work / "synth.zarr", workers=2)
    print(f"[2/3] converted {summary['converted']} cases → {summary['store']} "
          f"({time.perf_counter() - t1:.1f} s)")
    store = open_store(work / "synth.zarr")
    print("[3/3] the store:")
    print_table(describe(store))
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
