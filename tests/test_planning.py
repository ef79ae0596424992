"""nnU-Net-style topology and patch planning, and the import of nnU-Net v2 plans."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pgps_data.errors import PGPSInputError
from pgps_train.planning import load_nnunet_plans, plan_patch, snap_patch, unet_topology

FIXTURE = Path(__file__).parent / "fixtures" / "nnunet" / "nnUNetPlans.json"
FIX_SPACING = (2.226199984550476, 0.7795499861240387, 0.7795499861240387)

# (spacing, patch) -> (pools, strides, kernels) printed by nnU-Net v2.8.1's own
# get_pool_and_conv_props(spacing, patch, 4, 999999) (.venv-nnunet); our rule must agree.
NNUNET_GOLDEN = [
    (FIX_SPACING, (48, 96, 96), (3, 4, 4),
     [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
     [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]),
    ((1.0, 1.0, 1.0), (128, 128, 128), (5, 5, 5),
     [[1, 1, 1]] + [[2, 2, 2]] * 5, [[3, 3, 3]] * 6),
    ((5.0, 0.8, 0.8), (20, 320, 256), (2, 6, 6),
     [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]],
     [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]),
    ((3.0, 1.0, 1.0), (40, 60, 100), (3, 4, 4),
     [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
     [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]),
    ((1.0, 1.0, 2.2), (96, 160, 20), (4, 4, 2),
     [[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 1]],
     [[3, 3, 1], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]),
]


@pytest.mark.parametrize("spacing,patch,pools,strides,kernels", NNUNET_GOLDEN)
def test_unet_topology_matches_nnunet(spacing, patch, pools, strides, kernels) -> None:
    topo = unet_topology(patch, spacing)
    assert topo.pools == pools
    assert [list(s) for s in topo.strides] == strides
    assert [list(k) for k in topo.kernels] == kernels
    assert topo.step == tuple(2**p for p in pools)


def test_snap_patch_reaches_own_lattice() -> None:
    # 60 pools 4 times (step 16), so 48 (3 pools, step 8) and 64 (4 pools) are its neighbours
    assert snap_patch("unet", (60, 64, 64), (1, 1, 1)) == (48, 64, 64)
    assert snap_patch("unet", (60, 64, 64), (1, 1, 1), up=True) == (64, 64, 64)
    assert snap_patch("swinunetr", (40, 70, 96), (1, 1, 1)) == (32, 64, 96)
    assert snap_patch("unetr", (8, 70, 96), (1, 1, 1), up=True) == (16, 80, 96)
    assert snap_patch("unetr", (8, 70, 96), (1, 1, 1)) == (16, 64, 96)  # never below a step


@pytest.mark.parametrize(
    "median,spacing,budget,name",
    [
        ((300, 300, 300), (1.0, 1.0, 1.0), 2**21, "unet"),
        ((120, 512, 512), (3.0, 0.8, 0.8), 2**21, "unet"),
        ((200, 180, 160), (1.0, 1.0, 1.0), 2**18, "unet"),
        ((120, 512, 512), (3.0, 0.8, 0.8), 2**21, "unetr"),
        ((120, 512, 512), (3.0, 0.8, 0.8), 2**21, "swinunetr"),
    ],
)
def test_plan_patch_budget_and_lattice(median, spacing, budget, name) -> None:
    patch = plan_patch(median, spacing, budget=budget, name=name)
    assert math.prod(patch) <= budget
    if name == "unet":
        steps = unet_topology(patch, spacing).step
    else:
        steps = (16,) * 3 if name == "unetr" else (32,) * 3
    assert all(p % s == 0 and p >= s for p, s in zip(patch, steps))
    assert all(p <= m for p, m in zip(patch, median))  # rounded down: within the median case
    # the budget is used: one more step on the smallest-ratio axis would exceed it or the case
    assert math.prod(patch) > budget / 4


def test_plan_patch_examples() -> None:
    assert plan_patch((300, 300, 300), (1, 1, 1)) == (128, 128, 128)
    assert plan_patch((200, 180, 160), (1, 1, 1), budget=2**18) == (64, 64, 64)
    # anisotropic: the coarse axis is shrunk first (largest relative to the median case)
    assert plan_patch((120, 512, 512), (3.0, 0.8, 0.8)) == (48, 192, 224)


def test_plan_patch_reproduces_nnunet_fixture() -> None:
    """With nnU-Net's pad-up rounding and no budget pressure, the fixture's planned
    patch comes out of its own median shape and spacing."""
    cfg = json.loads(FIXTURE.read_text())["configurations"]["3d_fullres"]
    median, spacing = cfg["median_image_size_in_voxels"], cfg["spacing"]
    assert plan_patch(median, spacing, budget=10**9, round_up=True) == tuple(cfg["patch_size"])
    assert plan_patch(median, spacing, budget=10**9) == (40, 80, 80)  # ours: rounded down


def test_plan_patch_refuses_bad_input() -> None:
    with pytest.raises(PGPSInputError, match="spacing > 0"):
        plan_patch((10, 10, 10), (0, 1, 1))


def test_load_nnunet_plans_fixture() -> None:
    plans = load_nnunet_plans(FIXTURE, store_spacing=FIX_SPACING)
    assert plans["patch"] == (48, 96, 96)
    assert plans["spacing"] == FIX_SPACING
    assert plans["pools"] == (3, 4, 4)
    assert plans["batch_size"] == 2
    assert plans["kernels"][0] == (1, 3, 3)
    # our own rule plans the same topology from the imported patch and spacing
    assert unet_topology(plans["patch"], plans["spacing"]).strides == plans["strides"]


def test_load_nnunet_plans_undoes_transpose(tmp_path: Path) -> None:
    """A dataset whose coarse axis is the file's last: nnU-Net moves it first
    (transpose_forward [2, 0, 1]) and stores patch/spacing/strides in that order."""
    plans = json.loads(FIXTURE.read_text())
    ours_patch, ours_spacing = [96, 80, 40], [0.78, 0.7, 2.2]  # (Z, Y, X) file order
    fwd = [2, 0, 1]
    cfg = plans["configurations"]["3d_fullres"]
    cfg["patch_size"] = [ours_patch[a] for a in fwd]  # nnU-Net: plans axis j = file axis fwd[j]
    cfg["spacing"] = [ours_spacing[a] for a in fwd]
    ours_strides = [[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 1, 2]]
    cfg["architecture"]["arch_kwargs"]["strides"] = [[s[a] for a in fwd] for s in ours_strides]
    plans["transpose_forward"], plans["transpose_backward"] = fwd, [1, 2, 0]
    path = tmp_path / "nnUNetPlans.json"
    path.write_text(json.dumps(plans))
    got = load_nnunet_plans(path, store_spacing=ours_spacing)
    assert got["patch"] == tuple(ours_patch)
    assert got["spacing"] == tuple(ours_spacing)
    assert got["pools"] == (4, 3, 3)
    assert got["strides"][-1] == (2, 1, 2)


def test_load_nnunet_plans_legacy_pool_op_kernel_sizes(tmp_path: Path) -> None:
    plans = json.loads(FIXTURE.read_text())
    cfg = plans["configurations"]["3d_fullres"]
    cfg["pool_op_kernel_sizes"] = cfg["architecture"]["arch_kwargs"].pop("strides")
    path = tmp_path / "old.json"
    path.write_text(json.dumps(plans))
    assert load_nnunet_plans(path, FIX_SPACING)["pools"] == (3, 4, 4)


def test_load_nnunet_plans_spacing_mismatch_names_the_command() -> None:
    with pytest.raises(PGPSInputError) as e:
        load_nnunet_plans(FIXTURE, store_spacing=(2.0, 0.78, 0.78))
    msg = str(e.value)
    assert "\n" not in msg
    assert "pgps-convert RAW OUT --spacing 2.2262 0.77955 0.77955" in msg
    # the suggested spacing is accepted (within the 1e-3 relative tolerance)
    assert load_nnunet_plans(FIXTURE, (2.2262, 0.77955, 0.77955))["patch"] == (48, 96, 96)


def test_load_nnunet_plans_refusals(tmp_path: Path) -> None:
    with pytest.raises(PGPSInputError, match="3d_lowres"):
        load_nnunet_plans(FIXTURE, FIX_SPACING, configuration="3d_lowres")
    with pytest.raises(PGPSInputError, match="not 3D"):
        load_nnunet_plans(FIXTURE, FIX_SPACING, configuration="2d")
    plans = json.loads(FIXTURE.read_text())
    plans["image_reader_writer"] = "NibabelIOWithReorient"
    path = tmp_path / "p.json"
    path.write_text(json.dumps(plans))
    with pytest.raises(PGPSInputError, match="reoriented"):
        load_nnunet_plans(path, FIX_SPACING)
    with pytest.raises(PGPSInputError, match="cannot read"):
        load_nnunet_plans(tmp_path / "missing.json", FIX_SPACING)


def test_schedule_cli_takes_lattice_from_net(capsys: pytest.CaptureFixture[str]) -> None:
    from pgps_train.cli.schedule import main

    common = ["--epochs", "20", "--batch", "2", "--json"]
    assert main(["--net", "swinunetr", "--patch", "64", "64", "64", *common]) == 0
    stages = json.loads(capsys.readouterr().out)
    assert [s["patch"] for s in stages][:2] == [[32, 32, 32], [64, 32, 32]]
    assert len(stages) == 4  # (64-32)/32 per axis + 1
    # unet: the poolings follow --patch at --spacing (the fixture: step 8x16x16)
    argv = ["--net", "unet", "--patch", "48", "96", "96", "--spacing", *map(str, FIX_SPACING)]
    assert main([*argv, *common]) == 0
    stages = json.loads(capsys.readouterr().out)
    assert stages[0]["patch"] == [8, 16, 16] and stages[-1]["patch"] == [48, 96, 96]
    # a coarse z spacing keeps z unpooled longer: fewer z poolings, finer z steps
    argv = ["--net", "unet", "--patch", "32", "32", "32"]
    assert main([*argv, *common]) == 0  # default spacing 1 1 1: pools 3 per axis
    assert json.loads(capsys.readouterr().out)[0]["patch"] == [8, 8, 8]
    assert main([*argv, "--spacing", "5", "1", "1", *common]) == 0  # z pooled twice only
    assert json.loads(capsys.readouterr().out)[0]["patch"] == [4, 8, 8]
    assert main(["--net", "unet", "--patch", "48", "96", "96", "--spacing", "0", "1", "1",
                 *common]) == 2
    assert "--spacing needs three positive numbers" in capsys.readouterr().err
