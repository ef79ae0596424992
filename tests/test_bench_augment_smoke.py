"""Smoke test of tools/bench_augment.py: one --quick run (tiny shapes, 0.5-s cells), checked
through its JSON file and its printed table.

It runs the script as a user would (a subprocess with this venv's python; the nnU-Net side in
.venv-nnunet when that exists) and checks what the benchmark claims about itself: the parity
gate passed, both sides saw the same inputs (checksums) and produced the same output shapes
(image and every deep-supervision target), the rates are positive and finite and agree with
each other (Mvox/s = samples/s x voxels; ratios = quotients), and the goal column follows from
the ratio. It says nothing about the goals themselves (tiny data, loaded 2-core machine).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HAVE_NNUNET = (ROOT / ".venv-nnunet" / "bin" / "python").exists()
QUICK_ROWS = {((8, 16, 16), 2, False), ((8, 16, 16), 40, False), ((4, 16, 16), 8, True)}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    path = tmp_path_factory.mktemp("bench_augment") / "out.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_augment.py"), "--quick",
                           "--json", str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(path.read_text()), proc.stdout


def _rate(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_parity_gate_passed_and_rows_are_the_quick_set(quick) -> None:
    out, _ = quick
    assert out["parity"] == "ok" and out["parity_checks"]["ok"] is True
    for check in out["parity_checks"]["checks"]:
        assert check["warp_label_agreement"] >= 0.999 and check["warp_image_maxdiff"] <= 1e-4
    assert {(tuple(r["patch"]), r["batch"], r["dummy_2d"]) for r in out["rows"]} == QUICK_ROWS
    assert out["seconds"] == 0.5 and out["warmup_batches"] >= 3
    assert out["machine"]["cores"] >= 1 and "load" in out["load_start"]


def test_our_side_is_measured_consistently(quick) -> None:
    out, _ = quick
    for row in out["rows"]:
        ours = row["ours"]
        for key in ("samples_per_s", "mvox_per_s", "cpu_s_per_sample", "ms_per_batch"):
            assert _rate(ours[key]), (key, row["stage"])
        assert ours["samples_per_s_range"][0] <= ours["samples_per_s"] <= ours["samples_per_s_range"][1]
        cells = row["cells"]["ours"]
        assert len(cells) == out["rounds"] and all(c["threads"] == 2 for c in cells)
        for c in cells:
            vox = math.prod(c["batch_data_shape"][1:])
            assert c["batch_data_shape"] == [row["batch"], 1, *row["patch"]]
            assert c["mvox_per_s"] == pytest.approx(c["samples_per_s"] * vox / 1e6, rel=1e-9)
            assert c["seconds"] >= out["seconds"] and c["samples"] == c["batches"] * row["batch"]
            # deep-supervision targets: full resolution first, then round(n * s) per axis
            assert [t[2:] for t in c["target_shapes"]] == [
                [round(n * s) for n, s in zip(row["patch"], sc)] for sc in row["ds_scales"]]


@pytest.mark.skipif(not HAVE_NNUNET, reason="no .venv-nnunet (bash tools/nnunet_venv.sh)")
def test_both_sides_same_inputs_same_outputs_and_ratios(quick) -> None:
    out, table = quick
    assert out["nnunet"] is True and out["nnunet_versions"]["nnunetv2"] == "2.8.1"
    for row in out["rows"]:
        assert row["same_inputs"] and row["checksum_ours"] == row["checksum_nnunet"]
        setup = row["nnunet_setup"]  # nnU-Net's own configuration agrees with geometry_of
        assert setup["initial"] == row["initial"] and setup["dummy_2d"] == row["dummy_2d"]
        for side in ("direct", "shipped"):
            for key in ("samples_per_s", "mvox_per_s", "cpu_s_per_sample"):
                assert _rate(row[side][key]), (side, key, row["stage"])
            for c in row["cells"][side]:
                assert c["batch_data_shape"] == row["cells"]["ours"][0]["batch_data_shape"]
                assert c["target_shapes"] == row["cells"]["ours"][0]["target_shapes"]
        assert {c["processes"] for c in row["cells"]["shipped"]} == {out["processes"]} == {2}
        o, d, s = (row[k]["samples_per_s"] for k in ("ours", "direct", "shipped"))
        assert row["ratio_shipped"] == pytest.approx(o / s, abs=1e-3)
        assert row["ratio_direct"] == pytest.approx(o / d, abs=1e-3)
        assert row["goal_met"] is (row["ratio_shipped"] >= row["goal"])
    lines = table.splitlines()
    assert "parity: ok" in lines and any("goal met" in ln and "nn2/s" in ln for ln in lines)
    body = [ln.split() for ln in lines if ln.strip().startswith(("8x16x16", "4x16x16"))]
    assert [(b[0], int(b[1])) for b in body] == [("8x16x16", 2), ("8x16x16", 40), ("4x16x16(2D)", 8)]
    assert all(b[-2] in ("yes", "NO") for b in body)


@pytest.mark.skipif(HAVE_NNUNET, reason=".venv-nnunet exists: both sides run")
def test_without_nnunet_says_so_in_one_line(quick) -> None:
    out, table = quick
    assert out["nnunet"] is False and all("direct" not in r for r in out["rows"])
    assert sum("ours only" in ln for ln in table.splitlines()) == 1
