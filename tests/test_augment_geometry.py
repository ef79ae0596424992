"""nnU-Net's augmentation geometry (dummy 2D, rotation range, initial patch) and the spatial
draw law of batchgeneratorsv2's SpatialTransform as nnU-Net configures it."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pgps_data.schedule.augment_geometry import (
    OUTSIDE,
    AugmentSpec,
    Geometry,
    draw_spatial,
    geometry_of,
)
from pgps_data.schedule.curriculum import Curriculum

ROOT = Path(__file__).resolve().parents[1]
NNUNET_PY = ROOT / ".venv-nnunet" / "bin" / "python"

# notes/augment_nnunet.md §1.2 (computed there with nnU-Net's rule), plus a few more.
TABLE = [
    ((16, 32, 32), False, (35, 51, 42)),
    ((32, 64, 64), False, (70, 102, 84)),
    ((64, 128, 128), False, (140, 205, 168)),
    ((80, 160, 160), False, (175, 257, 210)),
    ((128, 128, 128), False, (205, 205, 205)),
    ((64, 192, 160), False, (178, 289, 200)),
    ((8, 32, 32), True, (8, 37, 37)),
    ((40, 160, 160), True, (40, 188, 188)),
    ((40, 224, 192), True, (40, 263, 263)),
]


@pytest.mark.parametrize("patch, dummy, initial", TABLE)
def test_initial_box_table(patch, dummy, initial) -> None:
    g = geometry_of(patch)
    assert g == Geometry(patch=patch, dummy_2d=dummy,
                         rotation=(-math.pi, math.pi) if dummy else (-math.pi / 6, math.pi / 6),
                         initial=initial)


def test_dummy_2d_switch_is_on_the_patch_shape() -> None:
    assert not geometry_of((16, 48, 48)).dummy_2d  # ratio exactly 3: not above the threshold
    assert geometry_of((16, 49, 48)).dummy_2d
    assert not geometry_of((64, 16, 16)).dummy_2d  # a long axis 0 is never dummy 2D
    with pytest.raises(ValueError):
        geometry_of((16, 32))


def _patches() -> list[tuple[int, int, int]]:
    """Every stage patch of a few real plans, and some odd shapes."""
    out = set(p for p, _, _ in TABLE)
    for final, steps in [((80, 160, 160), (16, 32, 32)), ((40, 224, 192), (8, 32, 32)),
                         ((64, 192, 160), (16, 32, 32))]:
        for rules in ("journal-2025", "miccai-2024"):
            cur = Curriculum.from_steps(patch=final, steps=steps, epochs=100,
                                        iterations_per_epoch=1, batch=2, rules=rules)
            out.update(cur.patch_sizes)
    rng = np.random.default_rng(0)
    out.update(tuple(int(v) for v in rng.integers(1, 300, 3)) for _ in range(60))
    return sorted(out)


_ORACLE = r"""
import ast, json, sys, types
import numpy as np
import nnunetv2
from nnunetv2.configuration import ANISO_THRESHOLD
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
# nnU-Net's own method, taken from its source file (importing the trainer module costs ~12 s)
path = nnunetv2.__path__[0] + "/training/nnUNetTrainer/nnUNetTrainer.py"
tree = ast.parse(open(path).read())
cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "nnUNetTrainer")
fn = next(n for n in cls.body if getattr(n, "name", "") ==
          "configure_rotation_dummyDA_mirroring_and_inital_patch_size")
ns = {"np": np, "ANISO_THRESHOLD": ANISO_THRESHOLD, "get_patch_size": get_patch_size}
exec(compile(ast.Module(body=[fn], type_ignores=[]), path, "exec"), ns)
out = []
for p in json.loads(sys.argv[1]):
    me = types.SimpleNamespace(configuration_manager=types.SimpleNamespace(patch_size=p),
                               print_to_log_file=lambda *a, **k: None)
    rot, dummy, initial, _ = ns[fn.name](me)
    out.append([p, [float(r) for r in rot], bool(dummy), [int(v) for v in initial]])
print(json.dumps(out))
"""


@pytest.mark.skipif(not NNUNET_PY.exists(), reason="no .venv-nnunet (tools/nnunet_venv.sh)")
def test_geometry_matches_nnunets_own_function() -> None:
    patches = _patches()
    proc = subprocess.run([str(NNUNET_PY), "-c", _ORACLE, json.dumps([list(p) for p in patches])],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout)
    assert len(rows) == len(patches) > 60
    for p, rot, dummy, initial in rows:
        g = geometry_of(p)
        assert (g.dummy_2d, g.rotation, g.initial) == (dummy, tuple(rot), tuple(initial)), p


def _draws(geometry: Geometry, n: int, seed: int = 0, spec: AugmentSpec | None = None):
    return [draw_spatial(np.random.default_rng([seed, i]), geometry, spec) for i in range(n)]


def test_spatial_law_3d() -> None:
    """Rotation and scaling each fire with 0.2, independently; angles U(+-30 deg) on all three
    axes; one scale factor U(0.7, 1.4) for all axes. (Statistical: ~5 sigma bounds.)"""
    n = 20000
    draws = _draws(geometry_of((16, 32, 32)), n)
    rot = np.array([d.rotate for d in draws])
    sca = np.array([d.scale for d in draws])
    sd = math.sqrt(0.2 * 0.8 / n)
    assert abs(rot.mean() - 0.2) < 5 * sd and abs(sca.mean() - 0.2) < 5 * sd
    assert abs((rot & sca).mean() - 0.04) < 5 * math.sqrt(0.04 * 0.96 / n)  # independent
    warped = np.array([d.warped for d in draws])
    assert abs(warped.mean() - 0.36) < 5 * math.sqrt(0.36 * 0.64 / n)
    angles = np.array([d.angles for d in draws])
    assert (angles[~rot] == 0).all()
    a = angles[rot]
    assert (np.abs(a) <= math.pi / 6).all() and (a != 0).all()
    for axis in range(3):  # roughly uniform: the ten deciles of the range hold ~10 % each
        hist = np.histogram(a[:, axis], bins=10, range=(-math.pi / 6, math.pi / 6))[0] / len(a)
        assert np.abs(hist - 0.1).max() < 0.03, (axis, hist)
    scales = np.array([d.scales for d in draws])
    assert (scales[~sca] == 1).all()
    s = scales[sca]
    assert (s[:, 0] == s[:, 1]).all() and (s[:, 1] == s[:, 2]).all()
    assert s.min() >= 0.7 and s.max() <= 1.4
    assert abs(s[:, 0].mean() - 1.05) < 0.01 and s.min() < 0.72 and s.max() > 1.38


def test_spatial_law_dummy_2d_is_in_plane_only() -> None:
    n = 10000
    draws = _draws(geometry_of((8, 32, 32)), n, seed=1)
    rot = np.array([d.rotate for d in draws])
    angles = np.array([d.angles for d in draws])
    scales = np.array([d.scales for d in draws])
    assert abs(rot.mean() - 0.2) < 5 * math.sqrt(0.16 / n)
    assert (angles[:, 1:] == 0).all() and (scales[:, 0] == 1).all()
    a = angles[rot, 0]
    assert (np.abs(a) <= math.pi).all()
    assert a.min() < -3.0 and a.max() > 3.0  # the full +-180 degrees, not +-30
    hist = np.histogram(a, bins=8, range=(-math.pi, math.pi))[0] / len(a)
    assert np.abs(hist - 0.125).max() < 0.03, hist
    sca = np.array([d.scale for d in draws])
    assert (scales[sca, 1] == scales[sca, 2]).all() and (scales[~sca] == 1).all()


def test_draws_are_pure_functions_of_the_generator_and_follow_the_spec() -> None:
    g = geometry_of((16, 32, 32))
    assert _draws(g, 50, seed=3) == _draws(g, 50, seed=3)
    assert _draws(g, 50, seed=3) != _draws(g, 50, seed=4)
    never = AugmentSpec(p_rotation=0.0, p_scaling=0.0)
    assert not any(d.warped for d in _draws(g, 200, spec=never))
    always = _draws(g, 200, spec=AugmentSpec(p_rotation=1.0, p_scaling=1.0, scaling=(1.2, 1.3)))
    assert all(d.rotate and d.scale and 1.2 <= d.scales[0] <= 1.3 for d in always)


def test_spec_round_trip_and_validation() -> None:
    spec = AugmentSpec(geometry="final", p_rotation=0.1)
    assert AugmentSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec != AugmentSpec()
    assert AugmentSpec().p_warp == pytest.approx(0.36)
    # "final": the final patch's dummy-2D decision and rotation range, the stage's own box
    assert spec.geometry_for((16, 32, 32), (80, 160, 160)) == geometry_of((16, 32, 32))
    frozen = spec.geometry_for((16, 32, 32), (40, 224, 192))  # 3D alone, dummy 2D at the end
    assert geometry_of((16, 32, 32)).dummy_2d is False
    assert frozen.dummy_2d is True and frozen.patch == (16, 32, 32)
    assert frozen.rotation == geometry_of((40, 224, 192)).rotation
    assert frozen.initial == (16, 37, 37)  # axis 0 kept, the in-plane ±180° box of 32×32
    back = spec.geometry_for((8, 32, 32), (80, 160, 160))  # dummy 2D alone, 3D at the end
    assert geometry_of((8, 32, 32)).dummy_2d is True and back.dummy_2d is False
    assert back.rotation == geometry_of((80, 160, 160)).rotation and back.initial[0] > 8
    assert AugmentSpec().geometry_for((16, 32, 32), (80, 160, 160)) == geometry_of((16, 32, 32))
    for bad in ({"geometry": "per_stage"}, {"p_rotation": 1.5}, {"scaling": (1.4, 0.7)}):
        with pytest.raises(ValueError):
            AugmentSpec(**bad)
    assert OUTSIDE == 255
