"""`make demo`: the main job on embedded synthetic data, ending in one result table.

synth → convert → train constant, efficiency and performance on the tiny preset (same
seed, same iteration count) → predict + evaluate the held-out fold in the source
geometry → a table: mode, wall time, share of constant's time, data-wait share, organ and
lesion Dice. Sized for a 2-core CPU machine (about 10 minutes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# isort: off
import pgps_train  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads libgomp)
# isort: on
from pgps_data.raw.convert import convert
from pgps_data.store.describe import describe, print_table
from pgps_data.store.store import open_store
from pgps_data.synthetic.dataset import write_synthetic_dataset
from pgps_train.cli.train import build_parser, config_from_args
from pgps_train.compare import comparison, load_runs, print_comparison
from pgps_train.trainer import train

MODES = ("constant", "efficiency", "performance")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="runs/demo", help="where data and runs go")
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--size", type=int, nargs=3, default=(48, 96, 96))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--train-args", default="", help="extra pgps-train flags, quoted")
    args = p.parse_args(argv)
    work = Path(args.work)
    t0 = time.perf_counter()

    print(f"[1/4] synthetic CT-like dataset ({args.cases} cases, ~{args.size}) ...", flush=True)
    raw = write_synthetic_dataset(work / "Task01_Synth", cases=args.cases, test_cases=2,
                                  size=tuple(args.size), seed=0)
    store_path = work / "synth.zarr"
    print("[2/4] pgps-convert ...", flush=True)
    convert(raw, store_path, workers=2, overwrite=True)
    print_table(describe(open_store(store_path)))

    runs = []
    for i, mode in enumerate(args.modes, start=1):
        print(f"[3/4] training {mode} ({i}/{len(args.modes)}) on the tiny preset ...", flush=True)
        out = work / "runs" / mode
        cli = [str(store_path), "--out", str(out), "--preset", "tiny", "--mode", mode,
               "--seed", "0", *args.train_args.split()]
        train(config_from_args(build_parser().parse_args(cli)), overwrite=True)  # the demo's own runs
        runs.append(out)

    print("[4/4] comparison (validation fold, Dice in the source geometry):", flush=True)
    print_comparison(comparison(load_runs(runs)), title="PGPS on the tiny preset")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; runs in {work / 'runs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
