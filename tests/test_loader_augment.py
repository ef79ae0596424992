"""The loader with nnU-Net's spatial augmentation decided per slot: the boxes it reads, where
it places them, OUTSIDE labels, determinism across workers, state identity, and the
unchanged stream without augmentation."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch

from pgps_data import Curriculum, make_loader, open_store
from pgps_data.errors import PGPSInputError
from pgps_data.loader.batching import max_step_bytes
from pgps_data.loader.pipeline import make_validation_loader
from pgps_data.loader.sampling import CropRequest, Sampler, plan_origins
from pgps_data.schedule.augment_geometry import OUTSIDE, AugmentSpec, geometry_of
from tests.loader_store import build_store

ALWAYS = AugmentSpec(p_rotation=1.0, p_scaling=1.0)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # small cases, so nnU-Net's boxes often leave them (I of 8x16x16 is 17x25x21)
    return open_store(build_store(tmp_path_factory.mktemp("augment"), cases=3, size=(14, 30, 30)))


def _cur(mode="performance", epochs=4, ipe=1, batch=2, patch=(8, 16, 16)):
    return Curriculum.from_steps(patch=patch, steps=(4, 8, 8), epochs=epochs,
                                 iterations_per_epoch=ipe, batch=batch, mode=mode)


def _collect(loader):
    return list(loader)


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key, value in x.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, y[key]), key
            else:
                assert value == y[key], key


def _outside(origin, shape, case_shape) -> np.ndarray:
    """True where the box at ``origin`` of ``shape`` lies outside the case."""
    inside = np.zeros(shape, bool)
    lo = np.maximum(origin, 0)
    hi = np.minimum(np.add(origin, shape), case_shape)
    if (hi > lo).all():
        inside[tuple(slice(a - o, c - o) for a, c, o in zip(lo, hi, origin))] = True
    return ~inside


def test_same_batch_on_0_1_2_workers_and_seed_matters(store) -> None:
    cur = _cur()
    spec = AugmentSpec()
    ref = _collect(make_loader(store, cur, workers=0, seed=7, augment=spec))
    _same(ref, _collect(make_loader(store, cur, workers=1, seed=7, augment=spec)))
    _same(ref, _collect(make_loader(store, cur, workers=2, seed=7, augment=spec)))
    assert sum(len(b["warp_slots"]) for b in ref) > 0  # the stream warps something
    other = _collect(make_loader(store, cur, workers=0, seed=8, augment=spec))
    assert any(not torch.equal(x["box_origins"], y["box_origins"]) for x, y in zip(ref, other))


def test_batches_hold_plain_rows_and_whole_boxes_read_from_the_store(store) -> None:
    """Every slot's rows equal a direct read of its box: warped slots the whole box I,
    the others its centre crop at floor(I/2) - F//2; OUTSIDE exactly outside the case."""
    cur = _cur(mode="efficiency", epochs=4, ipe=2, batch=4)
    seen = {"plain": 0, "warped": 0, "outside": 0}
    for b in make_loader(store, cur, workers=0, seed=3, augment=AugmentSpec(p_rotation=0.5)):
        patch = b["patch_size"]
        g = geometry_of(patch)
        assert b["initial_size"] == g.initial and b["dummy_2d"] is g.dummy_2d
        bsz, w = b["image"].shape[0], len(b["warp_slots"])
        assert tuple(b["image"].shape) == (bsz, store.channels, *patch)
        assert tuple(b["warp_image"].shape) == (w, store.channels, *g.initial)
        assert tuple(b["warp_label"].shape) == (w, 1, *g.initial)
        assert b["warp_angles"].dtype == torch.float32 and b["warp_scales"].shape == (w, 3)
        slots = b["warp_slots"].tolist()
        assert slots == sorted(slots)
        centre = np.array([i // 2 - f // 2 for i, f in zip(g.initial, patch)])
        for j, cid in enumerate(b["case_ids"]):
            case = store[cid]
            box = np.array(b["box_origins"][j].tolist())
            assert (np.array(b["origins"][j].tolist()) == box + centre).all()
            image, label = case.read(box, g.initial, label_pad=OUTSIDE)
            out = _outside(box, g.initial, case.shape)
            np.testing.assert_array_equal(label == OUTSIDE, out)
            seen["outside"] += int(out.any())
            if j in slots:
                k = slots.index(j)
                np.testing.assert_array_equal(b["warp_image"][k].numpy(), image)
                np.testing.assert_array_equal(b["warp_label"][k, 0].numpy(), label)
                assert (b["image"][j] == 0).all() and (b["label"][j] == 0).all()
                seen["warped"] += 1
            else:
                crop = tuple(slice(c, c + f) for c, f in zip(centre, patch))
                np.testing.assert_array_equal(b["image"][j].numpy(), image[(slice(None), *crop)])
                np.testing.assert_array_equal(b["label"][j, 0].numpy(), label[crop])
                seen["plain"] += 1
    assert min(seen.values()) > 0, seen


def test_warped_fraction_and_draws_are_keyed_by_slot_not_by_request() -> None:
    cur = Curriculum.from_steps(patch=(16, 32, 32), steps=(8, 16, 16), epochs=100,
                                iterations_per_epoch=1, batch=8, mode="efficiency")
    sampler = Sampler([f"c{i}" for i in range(5)], cur, seed=2, augment=AugmentSpec())
    warped = n = 0
    for step in range(cur.total_iterations):
        reqs = sampler.requests(step)
        assert sum(len(r.slots) for r in reqs) == 8 and all(r.parts == len(reqs) for r in reqs)
        for r in reqs:
            assert all(d.warped == r.warped for d in r.spatial)
            assert r.read_shape == (r.box if r.warped else r.patch)
            g = sampler.geometry(r.patch)
            assert [sampler.spatial_draw(step, s, g) for s in r.slots] == list(r.spatial)
            warped += r.warped * len(r.slots)
        n += 8
    assert abs(warped / n - 0.36) < 5 * math.sqrt(0.36 * 0.64 / n), warped / n
    # the draws do not depend on the case choice: another case list, the same draws
    other = Sampler(["x"], cur, seed=2, augment=AugmentSpec())
    g = sampler.geometry((16, 32, 32))
    assert [other.spatial_draw(0, s, g) for s in range(8)] == \
        [sampler.spatial_draw(0, s, g) for s in range(8)]


def _request(patch, shape_box, forced, slots) -> CropRequest:
    g = geometry_of(patch)
    assert g.initial == shape_box
    return CropRequest(case_id="c", step=0, stage=0, patch=patch, slots=tuple(slots),
                       forced=(forced,) * len(slots), seed=1, geometry=g)


# (F, I, case shape S, nnU-Net's lbs, ubs): need_to_pad n = I - F, or I - S where S + n < I;
# lbs = (-n)//2, ubs = S + n//2 + n%2 - I. Odd I - F on axes 0 and 1 of the first patch.
GET_BBOX = [
    ((16, 32, 32), (35, 51, 42), (24, 48, 48), (-10, -10, -5), (-1, 7, 11)),
    ((16, 32, 32), (35, 51, 42), (20, 30, 30), (-10, -11, -6), (-5, -10, -6)),
    ((16, 32, 32), (35, 51, 42), (60, 80, 90), (-10, -10, -5), (35, 39, 53)),
    ((8, 32, 32), (8, 37, 37), (5, 40, 33), (-2, -3, -3), (-1, 6, -1)),
]


@pytest.mark.parametrize("patch, box, shape, lbs, ubs", GET_BBOX)
def test_origins_follow_nnunets_get_bbox(patch, box, shape, lbs, ubs) -> None:
    req = _request(patch, box, False, range(600))
    origins = np.array(plan_origins(req, shape, {(1,): np.zeros((0, 3), np.int64)})[0])
    assert origins.min(0).tolist() == list(lbs) and origins.max(0).tolist() == list(ubs)
    voxels = np.array([[0, 0, 0], [2, 3, 1], [shape[0] - 1, shape[1] - 1, shape[2] - 1]])
    forced = _request(patch, box, True, range(60))
    origins, picked = plan_origins(forced, shape, {(1,): voxels})
    assert picked == [0] * 60
    allowed = {tuple(max(lb, int(v) - i // 2) for lb, v, i in zip(lbs, vox, box)) for vox in voxels}
    assert set(map(tuple, origins)) == allowed  # no upper clamp, as nnU-Net


def test_no_augmentation_leaves_every_draw_unchanged() -> None:
    """The requests and origins of the code before augmentation existed (its output hashed)."""
    out = {}
    locs = {(1,): np.array([[3, 4, 5], [10, 20, 30], [1, 1, 1]]), (2,): np.array([[7, 7, 7]])}
    for mode, rules in [("performance", "journal-2025"), ("efficiency", "journal-2025"),
                        ("performance", "miccai-2024")]:
        cur = Curriculum.from_steps(patch=(16, 32, 32), steps=(8, 16, 16), epochs=4,
                                    iterations_per_epoch=3, batch=3, mode=mode, rules=rules)
        s = Sampler(["a", "b", "c", "d", "e"], cur, seed=11)
        rows = []
        for step in (0, 5, 11):
            for r in s.requests(step):
                assert r.geometry is None and r.read_offset == (0, 0, 0)
                o, p = plan_origins(r, (20, 41, 37), locs)
                rows.append([r.case_id, list(r.slots), list(r.forced), r.part, r.parts,
                             [list(x) for x in o], p])
        out[f"{mode}/{rules}"] = rows
    digest = hashlib.sha256((json.dumps(out) + "\n").encode()).hexdigest()
    assert digest == "4d1aaa7420b5596dc906b6219ede3e25fdd5b457380f890d061dea9c9430f1e2"


def test_all_warped_and_none_warped_streams(store) -> None:
    """Every slot warped (the ring's worst case, through a worker) and none (W = 0)."""
    cur = _cur(mode="performance", ipe=2)
    for b in make_loader(store, cur, workers=1, seed=1, augment=ALWAYS):
        assert b["warp_slots"].tolist() == list(range(b["image"].shape[0]))
        assert (b["warp_scales"] >= 0.7).all() and (b["warp_angles"] != 0).all()
    never = AugmentSpec(p_rotation=0.0, p_scaling=0.0)
    for b in make_loader(store, _cur(), workers=0, seed=1, augment=never):
        g = geometry_of(b["patch_size"])
        assert tuple(b["warp_image"].shape) == (0, store.channels, *g.initial)
        assert b["warp_slots"].shape == (0,) and b["warp_angles"].shape == (0, 3)
    # the ring is sized for a step of whole boxes: |I| / |F| times a step without them
    sampler = make_loader(store, cur, workers=0, augment=AugmentSpec()).sampler
    plain = max_step_bytes(make_loader(store, cur, workers=0).sampler, 1)
    box = max(np.prod(geometry_of(s.patch).initial) * s.batch * 5 for s in cur.stages)
    assert max_step_bytes(sampler, 1) >= box > 2 * plain


def test_final_geometry_freezes_the_rotation_law_but_not_the_patch(store) -> None:
    cur = _cur(mode="efficiency", epochs=8, patch=(8, 32, 32))  # dummy 2D from 8x32x24 on
    final = geometry_of((8, 32, 32))
    patches, decisions = set(), set()
    for b in make_loader(store, cur, workers=0, seed=0, augment=AugmentSpec(geometry="final")):
        stage = geometry_of(b["patch_size"], dummy_2d=final.dummy_2d)
        assert b["initial_size"] == stage.initial and b["dummy_2d"] == final.dummy_2d
        assert tuple(b["image"].shape[2:]) == b["patch_size"]
        patches.add(b["patch_size"])
        decisions.add(geometry_of(b["patch_size"]).dummy_2d)
    assert len(patches) == len(cur.stages) == 8
    assert decisions == {True, False}  # "stage" would have switched the rotation law


def test_state_identity_includes_the_spec(store) -> None:
    cur = _cur()
    state = make_loader(store, cur, workers=0, seed=1, augment=AugmentSpec()).state_dict()
    make_loader(store, cur, workers=0, seed=1, augment=AugmentSpec()).load_state_dict(state)
    with pytest.raises(PGPSInputError, match="augment"):
        make_loader(store, cur, workers=0, seed=1,
                    augment=AugmentSpec(geometry="final")).load_state_dict(state)
    with pytest.raises(PGPSInputError, match="augment"):
        make_loader(store, cur, workers=0, seed=1).load_state_dict(state)
    plain = make_loader(store, cur, workers=0, seed=1).state_dict()
    assert "augment" not in plain  # states of runs without augmentation are as before
    with pytest.raises(PGPSInputError, match="augment"):
        make_loader(store, cur, workers=0, seed=1, augment=ALWAYS).load_state_dict(plain)


def test_resume_continues_the_augmented_stream(store) -> None:
    cur = _cur(ipe=3)
    full = _collect(make_loader(store, cur, workers=0, seed=4, augment=AugmentSpec()))
    first = make_loader(store, cur, workers=0, seed=4, augment=AugmentSpec())
    for _ in zip(range(4), first):
        pass
    resumed = make_loader(store, cur, workers=0, seed=4, augment=AugmentSpec())
    resumed.load_state_dict(first.state_dict())
    _same(full[4:], _collect(resumed))


def test_options_that_do_not_combine(store) -> None:
    with pytest.raises(ValueError, match="exclusive"):
        make_loader(store, _cur(), workers=0, margin=(1, 1, 1), augment=AugmentSpec())
    with pytest.raises(ValueError, match="OUTSIDE"):
        make_loader(store, _cur(), workers=0, label_pad=3, augment=AugmentSpec())
    assert make_validation_loader(store, _cur(), store.case_ids, workers=0).sampler.augment is None
