"""``pgps-schedule`` with ``--net unet|unetr|swinunetr``: the lattice comes from the network.

    pgps-schedule --net swinunetr --patch 128 128 128 --epochs 1000 --batch 2
    pgps-schedule --net unet --patch 48 96 96 --spacing 2.23 0.78 0.78 --epochs 1000 --batch 2

Everything else is :mod:`pgps_data.schedule_cli` (which stays torch-free); this module only
supplies the network names and lattices. For ``unet`` the poolings follow ``--patch`` at
``--spacing`` (Z Y X in mm, default 1 1 1) with nnU-Net's rule; ``--spacing`` is ours and is
removed before the arguments reach ``pgps_data.schedule_cli``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pgps_data import schedule_cli
from pgps_data.errors import PGPSInputError
from pgps_train.networks import NETWORKS, network_lattice

SPACING_HELP = (
    "  --spacing Z Y X       with --net unet: store spacing in mm that sets the poolings "
    "(default: 1 1 1)"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pgps-schedule`` with ``--net``; returns the exit status (0 ok, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        rest, spacing = _take_spacing(argv)
    except PGPSInputError as e:
        print(f"{schedule_cli.PROG}: error: {e}", file=sys.stderr)
        return 2
    patch = _peek_patch(rest)

    def net_lattice(name: str) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
        if patch is None:  # pragma: no cover (schedule_cli requires --patch first)
            raise PGPSInputError("--net needs --patch")
        lat = network_lattice(name, patch, spacing)
        return lat.steps, lat.minimum

    code = schedule_cli.main(rest, net_names=NETWORKS, net_lattice=net_lattice)
    if "-h" in rest or "--help" in rest:
        print(SPACING_HELP)
    return code


def _take_spacing(argv: list[str]) -> tuple[list[str], tuple[float, float, float]]:
    """Remove ``--spacing Z Y X`` from ``argv``; returns the rest and the spacing."""
    if "--spacing" not in argv:
        return argv, (1.0, 1.0, 1.0)
    i = argv.index("--spacing")
    values = argv[i + 1 : i + 4]
    try:
        spacing = tuple(float(v) for v in values)
    except ValueError:
        spacing = ()
    if len(spacing) != 3 or min(spacing) <= 0:
        raise PGPSInputError(f"--spacing needs three positive numbers Z Y X, got {values}")
    return argv[:i] + argv[i + 4 :], spacing  # type: ignore[return-value]


def _peek_patch(argv: list[str]) -> tuple[int, int, int] | None:
    """``--patch Z Y X`` if it parses; otherwise None (schedule_cli reports the error)."""
    p = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    p.add_argument("--patch", nargs=3)
    try:
        known, _ = p.parse_known_args(argv)
        return tuple(int(v) for v in known.patch)  # type: ignore[return-value]
    except (argparse.ArgumentError, TypeError, ValueError):
        return None


if __name__ == "__main__":
    raise SystemExit(main())
