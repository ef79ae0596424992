"""tools/gpu_check.sh really runs: with DEVICE=cpu at a tiny size it goes through synth,
convert and the three training modes, and reports every stage (so a module move can never
silently break the one script a GPU session runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

GPU_CHECK = Path(__file__).parents[1] / "tools" / "gpu_check.sh"


def test_gpu_check_runs_on_cpu_at_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "gc"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "DEVICE": "cpu",
           "CASES": "5", "SIZE": "16 32 32", "ITERS": "1", "WORKERS": "1", "BATCH": "2",
           "MAX_SECONDS": "60", "RUN_TIMEOUT": "180", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(["bash", str(GPU_CHECK)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    for mode in ("constant", "efficiency", "performance"):
        assert f"train {mode}: " in run.stdout and "FAILED" not in run.stdout
    report = json.loads((out / "results.json").read_text())
    assert sorted(report) == ["constant", "efficiency", "performance"]
    assert len(report["constant"]["stages"]) == 1
    assert len(report["efficiency"]["stages"]) > 1  # the curriculum really grew the patch
    for summary in report.values():
        assert summary["iterations"] == sum(s["steps"] for s in summary["stages"])
