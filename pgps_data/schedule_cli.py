"""``pgps-schedule``: print (or plot) a PGPS schedule before training with it.

    pgps-schedule --patch 80 192 160 --pools 4 5 5 --epochs 1000 \\
        --iterations-per-epoch 250 --batch 2 --mode performance [--rules miccai-2024] \\
        [--min Z Y X] [--steps Z Y X] [--max-voxels-per-step V] [--seed N] [--json] \\
        [--plot schedule.png]

The table shows each stage's patch, batch, epochs, iterations, voxels per step and its
share of the compute of a constant-patch run. ``--json`` prints the stages as a JSON list
for machines. Bad input prints one line ``pgps-schedule: error: ...`` and exits 2.

The lattice comes from ``--pools`` or ``--steps``. A caller that knows networks (the
trainer package; ``pgps_data`` never imports it) adds ``--net NAME`` by passing
``net_names`` and a ``net_lattice`` callable to :func:`main`; this module stays torch-free.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pgps_data.curriculum import MODES, RULES, Curriculum
from pgps_data.errors import PGPSInputError

PROG = "pgps-schedule"
# name -> (lattice step per axis, network minimum per axis or None)
NetLattice = Callable[[str], tuple[Sequence[int], Sequence[int] | None]]


def main(
    argv: Sequence[str] | None = None,
    *,
    net_names: Sequence[str] | None = None,
    net_lattice: NetLattice | None = None,
) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input)."""
    parser = build_parser(net_names)
    try:
        args = parser.parse_args(argv)
        cur = curriculum_from_args(args, net_lattice)
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


def build_parser(net_names: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; ``--net`` exists only when ``net_names`` is given."""
    p = _OneLineParser(
        prog=PROG,
        description="Print the PGPS patch/batch schedule (journal-2025 or miccai-2024 rules).",
    )
    zyx = {"nargs": 3, "type": int, "metavar": ("Z", "Y", "X")}
    p.add_argument("--patch", required=True, help="final patch size P", **zyx)
    lattice = p.add_mutually_exclusive_group(required=True)
    lattice.add_argument("--pools", help="poolings per axis (step = 2**pools)", **zyx)
    lattice.add_argument("--steps", help="lattice step per axis", **zyx)
    if net_names:
        lattice.add_argument("--net", choices=list(net_names), help="take the lattice from a net")
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


def curriculum_from_args(
    args: argparse.Namespace, net_lattice: NetLattice | None = None
) -> Curriculum:
    """Build the :class:`Curriculum` the parsed arguments describe.

    With ``--net``, steps and minimum come from ``net_lattice(name)``; ``--min`` then
    raises that minimum further (per-axis maximum of both).
    """
    min_size = args.min_size
    if getattr(args, "net", None) is not None:
        if net_lattice is None:
            raise PGPSInputError(f"--net {args.net} needs a lattice provider (use --pools)")
        steps, net_min = net_lattice(args.net)
        if net_min is not None:
            min_size = list(net_min) if min_size is None else list(map(max, min_size, net_min))
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


def stages_json(cur: Curriculum) -> list[dict[str, Any]]:
    """``--json`` output: one dict per stage (ends exclusive). In random mode, the patch
    list, each entry spanning the whole run."""
    keys = ("start_epoch", "end_epoch", "start_iter", "end_iter")
    return [
        {"patch": list(s.patch), "batch": s.batch, **{k: getattr(s, k) for k in keys}}
        for s in cur.stages
    ]


def print_table(cur: Curriculum, console: Any | None = None) -> None:
    """Rich table of the stages with voxels per step and compute share, plus a total."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=max(Console().width, 110))
    S = len(cur.patch_sizes)
    title = (
        f"PGPS schedule: {cur.mode}, {cur.rules}, {S} patch size{'s' * (S != 1)}, "
        f"min {_fmt(cur.minimum)}, steps {_fmt(cur.steps)}"
    )
    table = Table(title=title, caption=_caption(cur), show_footer=True)
    total_share = cur.compute_share()
    E, T = cur.epochs, cur.total_iterations
    for name, footer, justify in [
        ("#", "total", "right"),
        ("patch Z×Y×X", "", "left"),
        ("batch", "", "right"),
        ("epochs", f"{0}–{E}", "right"),
        ("iterations", f"{0}–{T}", "right"),
        ("voxels/step", "", "right"),
        ("compute vs constant", f"{total_share:.1%}", "right"),
    ]:
        table.add_column(name, footer=footer, justify=justify)  # type: ignore[arg-type]
    for s in cur.stages:
        table.add_row(
            str(s.index),
            _fmt(s.patch),
            str(s.batch),
            f"{s.start_epoch}–{s.end_epoch}",
            f"{s.start_iter}–{s.end_iter}",
            f"{s.batch * s.voxels:,}",
            f"{cur.stage_share(s):.1%}",
        )
    console.print(table)


def plot_schedule(cur: Curriculum, path: str | Path) -> Path:
    """Write a PNG of patch size (per axis and voxels) and batch over the epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (ax_axes, ax_vox, ax_batch) = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    if cur.mode == "random":  # one dot per sampled step: the drawn patch
        n = min(cur.total_iterations, 2000)
        steps = [i * cur.total_iterations // n for i in range(n)]
        drawn = [cur.stage_at(t) for t in steps]
        x = [t / cur.iterations_per_epoch for t in steps]
        for a, name in enumerate("ZYX"):
            ax_axes.plot(x, [s.patch[a] for s in drawn], ".", ms=2, label=name)
        ax_vox.plot(x, [s.voxels for s in drawn], ".", ms=2, label="voxels per crop")
        ax_batch.plot(x, [s.batch for s in drawn], ".", ms=2)
    else:
        x = [s.start_epoch for s in cur.stages] + [cur.epochs]

        def edges(values: list[int]) -> list[int]:
            return values + values[-1:]

        for a, name in enumerate("ZYX"):
            ax_axes.step(x, edges([s.patch[a] for s in cur.stages]), where="post", label=name)
        ax_vox.step(x, edges([s.voxels for s in cur.stages]), where="post", label="per crop")
        per_step = [s.voxels * s.batch for s in cur.stages]
        ax_vox.step(x, edges(per_step), where="post", label="per step (× batch)")
        ax_batch.step(x, edges([s.batch for s in cur.stages]), where="post")
    ax_axes.set_ylabel("patch size (voxels)")
    ax_vox.set_ylabel("voxels")
    ax_batch.set_ylabel("batch")
    batches = [s.batch for s in cur.stages]
    if max(batches) >= 10 * min(batches):
        ax_batch.set_yscale("log")
    ax_batch.set_xlabel("epoch")
    ax_axes.legend()
    ax_vox.legend()
    share = cur.compute_share()
    fig.suptitle(f"PGPS {cur.mode}, {cur.rules}: {share:.1%} of constant compute")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise PGPSInputError(f"{path}: cannot write the plot ({e.strerror})") from None
    finally:
        plt.close(fig)
    return path


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line ``pgps-schedule: error: ...`` (no usage dump), exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {' '.join(message.split())}", file=sys.stderr)
        raise SystemExit(2)


def _fmt(patch: Sequence[int]) -> str:
    return "×".join(str(v) for v in patch)


def _caption(cur: Curriculum) -> str:
    V, B = math.prod(cur.final_patch), cur.final_batch
    lines = [f"constant: {_fmt(cur.final_patch)} × {B} = {V * B:,} voxels per step"]
    if cur.mode == "random":
        lines.append("random: each step draws one patch uniformly; compute is the expected share")
    grouping = "B cases per batch (journal case grouping)"
    lines.append(f"oversampling: {grouping if cur.oversampling != 'slot' else 'nnU-Net slots'}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
