"""Crop requests and crop origins: the oversampling rules and nnU-Net's origin rule."""

from __future__ import annotations

import numpy as np
import pytest

from pgps_data.loader.sampling import CropRequest, Sampler, crop_rng, plan_origins
from pgps_data.schedule.curriculum import Curriculum

CASES = [f"c{i}" for i in range(7)]


def _cur(mode: str, rules: str = "journal-2025", batch: int = 2) -> Curriculum:
    return Curriculum.from_steps(patch=(32, 64, 64), steps=(16, 32, 32), epochs=4,
                                 iterations_per_epoch=3, batch=batch, mode=mode, rules=rules)


def _flatten(reqs: list[CropRequest]) -> tuple[list[int], list[bool], list[str]]:
    slots, forced, cases = [], [], []
    for r in reqs:
        slots += r.slots
        forced += r.forced
        cases += [r.case_id] * len(r.slots)
    return slots, forced, cases


@pytest.mark.parametrize("mode,rules", [("efficiency", "journal-2025"),
                                        ("constant", "journal-2025"),
                                        ("performance", "miccai-2024")])
def test_slot_rule_forces_exactly_the_last_slots(mode: str, rules: str) -> None:
    cur = _cur(mode, rules)
    sampler = Sampler(CASES, cur, seed=1)
    assert sampler.oversampling == "slot"
    for step in range(cur.total_iterations):
        reqs = sampler.requests(step)
        slots, forced, _ = _flatten(reqs)
        b = cur.stage_at(step).batch
        assert sorted(slots) == list(range(b))
        by_slot = dict(zip(slots, forced))
        # nnU-Net: slot j forced iff j >= round(b * (1 - p)), p = 0.5 (Python's round)
        assert [by_slot[j] for j in range(b)] == [j >= round(b * 0.5) for j in range(b)]
        # one request per case, all parts know the step size
        assert len({r.case_id for r in reqs}) == len(reqs)
        assert all(r.parts == len(reqs) and r.batch == b for r in reqs)


def test_journal_performance_groups_crops_by_case() -> None:
    cur = _cur("performance")
    sampler = Sampler(CASES, cur, seed=2)
    assert sampler.oversampling == "case_grouping"
    for step in (0, cur.stages[1].start_iter, cur.total_iterations - 1):
        b = cur.stage_at(step).batch
        reqs = sampler.requests(step)
        assert len(reqs) == 2  # B = 2 cases per batch
        first, second = reqs
        assert not any(first.forced) and all(second.forced)  # one random, one forced case
        assert len(first.slots) == b // 2 and len(second.slots) == b - b // 2  # odd crop: forced
        assert first.slots + second.slots == tuple(range(b))


def test_probabilistic_oversampling_is_seeded_and_near_p() -> None:
    cur = _cur("efficiency", batch=40)
    a = Sampler(CASES, cur, seed=5, oversampling="probabilistic")
    b = Sampler(CASES, cur, seed=5, oversampling="probabilistic")
    forced = [f for s in range(cur.total_iterations) for f in _flatten(a.requests(s))[1]]
    assert forced == [f for s in range(cur.total_iterations) for f in _flatten(b.requests(s))[1]]
    assert 0.35 < np.mean(forced) < 0.65
    assert len(set(forced)) == 2


def test_requests_are_pure_functions_of_seed_and_step() -> None:
    cur = _cur("performance", "miccai-2024", batch=3)
    one, two = Sampler(CASES, cur, seed=9), Sampler(CASES, cur, seed=9)
    assert [one.requests(s) for s in range(6)] == [two.requests(s) for s in reversed(range(6))][::-1]
    other = Sampler(CASES, cur, seed=10)
    assert [one.requests(s) for s in range(6)] != [other.requests(s) for s in range(6)]
    drawn = {r.case_id for s in range(cur.total_iterations) for r in one.requests(s)}
    assert len(drawn) >= 5  # uniform with replacement over 7 cases reaches most of them


def _request(patch, forced, slots=None) -> CropRequest:
    slots = tuple(range(len(forced))) if slots is None else slots
    return CropRequest(case_id="c", step=3, stage=0, patch=patch, slots=slots,
                       forced=tuple(forced), seed=0, batch=len(forced), parts=1)


def test_random_origins_follow_nnunet_bounds() -> None:
    shape = (20, 40, 40)
    req = _request((16, 32, 32), [False] * 200)
    origins, picked = plan_origins(req, shape, {(1,): np.zeros((0, 3), int)})
    o = np.array(origins)
    assert picked == [-1] * 200
    assert o.min(0).tolist() == [0, 0, 0] and o.max(0).tolist() == [4, 8, 8]
    # a patch larger than the case: the case sits inside, padding split as nnU-Net does
    req = _request((24, 48, 40), [False] * 200)
    o = np.array(plan_origins(req, shape, {})[0])
    assert o.min(0).tolist() == [-2, -4, 0] and o.max(0).tolist() == [-2, -4, 0]


def test_forced_origins_centre_on_a_stored_voxel_of_a_present_class() -> None:
    shape = (40, 80, 80)
    organ = np.array([[10, 20, 30], [11, 21, 31]])
    lesion = np.array([[35, 75, 5]])
    locations = {(1,): organ, (2,): lesion, (3,): np.zeros((0, 3), int)}
    req = _request((16, 32, 32), [True] * 64)
    origins, picked = plan_origins(req, shape, locations)
    assert set(picked) == {0, 1}  # the absent class 3 is never picked
    for origin, k in zip(origins, picked):
        centres = organ if k == 0 else lesion
        hit = [np.all(np.array(origin) == np.maximum(0, c - np.array([8, 16, 16])))
               for c in centres]
        assert any(hit)
    # a lesion near the far border: the crop still contains it (padded beyond the end)
    k = picked.index(1)
    assert origins[k] == (27, 59, 0)


def test_forced_crop_without_foreground_falls_back_to_random() -> None:
    req = _request((8, 8, 8), [True] * 20)
    origins, picked = plan_origins(req, (10, 10, 10), {(1,): np.zeros((0, 3), int)})
    assert picked == [-1] * 20
    assert all(0 <= c <= 2 for o in origins for c in o)


def test_ignore_label_centres_unforced_crops_on_annotated_voxels() -> None:
    annotated = np.array([[5, 5, 5]])
    req = _request((4, 4, 4), [False] * 10)
    origins, _ = plan_origins(req, (30, 30, 30), {(1,): np.zeros((0, 3), int)}, annotated)
    assert set(origins) == {(3, 3, 3)}


def test_crop_rng_depends_only_on_seed_rank_step_slot() -> None:
    a = _request((8, 8, 8), [True, False])
    b = CropRequest(case_id="other", step=3, stage=5, patch=(16, 16, 16), slots=(0, 1),
                    forced=(False, False), seed=0)
    assert crop_rng(a, 1).random() == crop_rng(b, 1).random()
    assert crop_rng(a, 0).random() != crop_rng(a, 1).random()
