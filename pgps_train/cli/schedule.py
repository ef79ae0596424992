"""``pgps-schedule``: print (or plot) a PGPS schedule before training with it.

    pgps-schedule --patch 80 192 160 --pools 4 5 5 --epochs 1000 \\
        --iterations-per-epoch 250 --batch 2 --mode performance [--rules miccai-2024] \\
        [--min Z Y X] [--steps Z Y X] [--max-voxels-per-step V] [--seed N] [--json] \\
        [--plot schedule.png]
    pgps-schedule --net swinunetr --patch 128 128 128 --epochs 1000 --batch 2
    pgps-schedule --net unet --patch 48 96 96 --spacing 2.23 0.78 0.78 --epochs 1000 --batch 2

The table shows each stage's patch, batch, epochs, iterations, voxels per step and its
share of the compute of a constant-patch run. ``--json`` prints the stages as a JSON list
for machines. Bad input prints one line ``pgps-schedule: error: ...`` and exits 2.

The lattice comes from ``--pools``, ``--steps`` or ``--net``. With ``--net unet`` the
poolings follow ``--patch`` at ``--spacing`` (Z Y X in mm, default 1 1 1) with nnU-Net's
rule. torch is imported only for ``--net``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from pgps_data.errors import PGPSInputError
from pgps_data.schedule.curriculum import MODES, RULES, Curriculum
from pgps_data.schedule.report import plot_schedule, print_table, stages_json
from pgps_train.planning import NETWORKS  # torch-free: the names without the networks

PROG = "pgps-schedule"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        cur = curriculum_from_args(args)
        if args.plot is not None and not args.plot.parent.is_dir():  # fail before any output
            raise PGPSInputError(f"{args.plot.parent} does not exist (create it or change --plot)")
        if args.json:
            rows = [json.dumps(row) for row in stages_json(cur)]
            print("[\n " + ",\n ".join(rows) + "\n]")
        else:
            print_table(cur)
        if args.plot is not None:
            path = plot_schedule(cur, args.plot)
            print(f"wrote {path}", file=sys.stderr)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, already printed)
        return e.code if isinstance(e.code, int) else 2
    except PGPSInputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--net`` and ``--spacing`` included)."""
    p = _OneLineParser(
        prog=PROG,
        description="Print the PGPS patch/batch schedule (journal-2025 or miccai-2024 rules).",
    )
    zyx = {"nargs": 3, "type": int, "metavar": ("Z", "Y", "X")}
    p.add_argument("--patch", required=True, help="final patch size P", **zyx)
    lattice = p.add_mutually_exclusive_group(required=True)
    lattice.add_argument("--pools", help="poolings per axis (step = 2**pools)", **zyx)
    lattice.add_argument("--steps", help="lattice step per axis", **zyx)
    lattice.add_argument("--net", choices=NETWORKS, help="take the lattice from a net")
    p.add_argument("--spacing", nargs=3, type=float, default=None, metavar=("Z", "Y", "X"),
                   help="with --net unet: store spacing in mm that sets the poolings "
                        "(default: 1 1 1)")
    p.add_argument("--min", dest="min_size", help="network minimum patch per axis", **zyx)
    p.add_argument("--epochs", type=int, required=True, help="total epochs E")
    p.add_argument("--iterations-per-epoch", type=int, default=250, help="default: 250")
    p.add_argument("--batch", type=int, required=True, help="final batch size B")
    p.add_argument("--mode", choices=MODES, default="performance", help="default: performance")
    p.add_argument("--rules", choices=RULES, default=RULES[0], help=f"default: {RULES[0]}")
    p.add_argument(
        "--max-voxels-per-step",
        type=int,
        default=None,
        metavar="V",
        help="cap batch x patch voxels in performance mode, never below --batch (ours; off)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random mode's draws")
    p.add_argument("--json", action="store_true", help="print the stages as a JSON list")
    p.add_argument("--plot", type=Path, default=None, metavar="PNG", help="write a plot")
    return p


def curriculum_from_args(args: argparse.Namespace) -> Curriculum:
    """Build the :class:`Curriculum` the parsed arguments describe.

    With ``--net``, steps and minimum come from the network's lattice at ``--patch``;
    ``--min`` then raises that minimum further (per-axis maximum of both).
    """
    min_size = args.min_size
    if args.spacing is not None:
        if args.net is None:
            raise PGPSInputError("--spacing sets a network's poolings: use it with --net")
        if min(args.spacing) <= 0:
            raise PGPSInputError(f"--spacing needs three positive numbers Z Y X, got {args.spacing}")
    if args.net is not None:
        from pgps_train.networks import network_lattice  # torch only when asked for

        lat = network_lattice(args.net, tuple(args.patch), tuple(args.spacing or (1.0, 1.0, 1.0)))
        steps = lat.steps
        if lat.minimum is not None:
            min_size = list(lat.minimum) if min_size is None else list(map(max, min_size, lat.minimum))
    elif args.pools is not None:
        if any(p < 0 for p in args.pools):
            raise PGPSInputError(f"--pools must be at least 0 on every axis, got {args.pools}")
        steps = tuple(2**p for p in args.pools)
    else:
        steps = args.steps
    return Curriculum.from_steps(
        patch=args.patch,
        steps=steps,
        epochs=args.epochs,
        iterations_per_epoch=args.iterations_per_epoch,
        batch=args.batch,
        mode=args.mode,
        rules=args.rules,
        min_size=min_size,
        max_voxels_per_step=args.max_voxels_per_step,
        seed=args.seed,
    )


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line ``pgps-schedule: error: ...`` (no usage dump), exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {' '.join(message.split())}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    raise SystemExit(main())
