"""``pgps-schedule``'s own options: ``--spacing`` only with ``--net``, and no torch
without ``--net`` (the schedule's arithmetic is pure; only a network's lattice needs torch).
The schedules it prints are tested in test_curriculum.py and test_planning.py (which
also checks that --spacing given with --net unet changes the poolings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pgps_train.cli.schedule import main

ROOT = Path(__file__).resolve().parents[1]
POOLS = ["--patch", "32", "64", "64", "--pools", "2", "3", "3", "--epochs", "40",
         "--batch", "2", "--json"]


def test_spacing_without_net_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*POOLS, "--spacing", "2", "1", "1"]) == 2
    got = capsys.readouterr()
    assert got.out == ""
    assert got.err.splitlines() == [
        "pgps-schedule: error: --spacing sets a network's poolings: use it with --net"]


def test_pools_never_imports_torch() -> None:
    """In a fresh interpreter a --pools schedule is computed (the curriculum and the CLI
    loaded) while torch, MONAI and the networks stay unimported."""
    code = (
        "import json, sys\n"
        "from pgps_train.cli.schedule import main\n"
        f"rc = main({POOLS!r})\n"
        "watch = ('torch', 'monai', 'pgps_train.networks', 'pgps_data.schedule.curriculum')\n"
        "print(json.dumps([rc, [m for m in watch if m in sys.modules]]), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[-1]["end_epoch"] == 40  # the schedule was printed
    assert json.loads(proc.stderr.splitlines()[-1]) == [0, ["pgps_data.schedule.curriculum"]]
