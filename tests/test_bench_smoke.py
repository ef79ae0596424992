"""Smoke tests of the benchmarks in tools/: each runs in --quick mode and reports its ratios.

They run the scripts as a user would (subprocesses with this venv's python) and check the
machine-readable output: every throughput and ratio the quick mode measures is a positive
number. They say nothing about the goals (tiny data, 1-s windows); the full runs do.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(script: str, *args: str, timeout: float = 100) -> dict:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / script), "--quick", "--json", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def test_bench_read_quick() -> None:
    out = _run("bench_read.py", timeout=60)
    assert out["rows"]
    for row in out["rows"]:
        for key in ("npy_ms", "fast_ms", "ratio", "zarr_ratio"):
            assert _positive(row[key]), (key, row)


def test_bench_convert_quick(tmp_path: Path) -> None:
    out = _run("bench_convert.py", "--work", str(tmp_path), timeout=60)
    (ours,) = out["rows"]  # nnU-Net is skipped in --quick
    assert ours["tool"].startswith("pgps-convert")
    for key in ("seconds", "cases_per_min", "store_mb"):
        assert _positive(ours[key]), (key, ours)
    assert out["ratio"] is None and out["nnunet_skipped"]


def test_bench_loader_quick(tmp_path: Path) -> None:
    out = _run("bench_loader.py", "--skip-peers", "--work", str(tmp_path), timeout=110)
    rows = out["rows"]
    assert {r["mode"] for r in rows} == {"efficiency", "performance"}
    for row in rows:
        for key in ("ours_c", "ours_u", "memmap", "r_memmap_c", "r_memmap_u", "amp_c", "amp_u"):
            assert _positive(row[key]), (key, row)
        assert "nnunet" not in row and "monai" not in row  # --skip-peers
    for row in out["stage_change"]:
        assert row["ratio"] >= 0 and _positive(row["steady_ms"]), row  # 0: batch prefetched
    assert len(out["memory"]) == 2
    for row in out["memory"]:
        assert row["cases"] > 0 and isinstance(row["uss_growth_mb"], float), row


def test_bench_remote_quick(tmp_path: Path) -> None:
    out = _run("bench_remote.py", "--work", str(tmp_path), timeout=110)
    rows = out["rows"]
    assert out["servers"] == ["http"]  # --quick: loopback only, no latency runs
    assert {r["mode"] for r in rows} == {"efficiency", "performance"} and len(rows) == 6
    for row in rows:
        for key in ("local", "http", "r_http"):
            assert _positive(row[key]), (key, row)
    # the tiny store fits the chunk cache: after warm-up hardly a request per batch
    assert min(r["req_http"] for r in rows) < 1
