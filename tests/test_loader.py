"""The streaming loader end to end: stages, forced crops, determinism, resume, memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgps_data import Curriculum, make_loader, open_store
from pgps_data.errors import PGPSInputError
from pgps_data.loader.pipeline import make_validation_loader
from tests.loader_store import build_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return open_store(build_store(tmp_path_factory.mktemp("loader")))


def _cur(mode="performance", rules="journal-2025", epochs=4, ipe=3, batch=2, patch=(16, 32, 32)):
    return Curriculum.from_steps(patch=patch, steps=(8, 16, 16), epochs=epochs,
                                 iterations_per_epoch=ipe, batch=batch, mode=mode, rules=rules)


def _collect(loader, n=None):
    out = []
    for batch in loader:
        out.append(batch)
        if n is not None and len(out) == n:
            break
    return out


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["step"] == y["step"] and x["case_ids"] == y["case_ids"]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])


def test_batches_follow_the_schedule_and_never_mix_sizes(store) -> None:
    cur = _cur()
    batches = _collect(make_loader(store, cur, workers=2, seed=0))
    assert [b["step"] for b in batches] == list(range(cur.total_iterations))
    for b in batches:
        stage = cur.stage_at(b["step"])
        assert b["stage"] == stage.index and b["patch_size"] == stage.patch
        assert tuple(b["image"].shape) == (stage.batch, store.channels, *stage.patch)
        assert tuple(b["label"].shape) == (stage.batch, 1, *stage.patch)
        assert b["image"].dtype == torch.float32 and len(b["case_ids"]) == stage.batch
    assert len({b["patch_size"] for b in batches}) == len(cur.stages)


def test_forced_crops_contain_their_label_and_reach_the_rare_label(store) -> None:
    cur = _cur(mode="efficiency", batch=4, epochs=4, ipe=6)
    classes = [1, 2]  # locations order: organ, lesion
    lesion_seen = 0
    for b in make_loader(store, cur, workers=1, seed=4):
        forced = b["forced_fg"].numpy()
        assert forced.tolist() == [False, False, True, True]  # slot rule, b = 4
        for j in np.flatnonzero(forced):
            k = int(b["forced_class"][j])
            assert k >= 0
            assert (b["label"][j] == classes[k]).any()
            lesion_seen += classes[k] == 2
    assert lesion_seen > 0


def test_same_crops_on_any_number_of_workers(store) -> None:
    cur = _cur(mode="performance", rules="miccai-2024")
    ref = _collect(make_loader(store, cur, workers=0, seed=7))
    _same(ref, _collect(make_loader(store, cur, workers=1, seed=7)))
    _same(ref, _collect(make_loader(store, cur, workers=2, seed=7)))
    other = _collect(make_loader(store, cur, workers=2, seed=8))
    assert any(not torch.equal(x["image"], y["image"]) for x, y in zip(ref, other))


@pytest.mark.parametrize("stop_after", [4, 3])  # mid-stage, and right at a stage change
def test_exact_resume(store, stop_after: int) -> None:
    cur = _cur(ipe=3)
    assert cur.stages[1].start_iter == 3
    full = _collect(make_loader(store, cur, workers=2, seed=1))
    first = make_loader(store, cur, workers=2, seed=1)
    _collect(first, stop_after)
    state = first.state_dict()
    first.close()
    resumed = make_loader(store, cur, workers=2, seed=1)
    resumed.load_state_dict(state)
    _same(full[stop_after:], _collect(resumed))


def test_state_from_another_stream_is_refused(store) -> None:
    loader = make_loader(store, _cur(), workers=0, seed=1)
    state = loader.state_dict()
    with pytest.raises(PGPSInputError, match="seed"):
        make_loader(store, _cur(), workers=0, seed=2).load_state_dict(state)
    with pytest.raises(PGPSInputError, match="curriculum"):
        make_loader(store, _cur(mode="efficiency"), workers=0, seed=1).load_state_dict(state)
    with pytest.raises(PGPSInputError, match="cases"):
        make_loader(store, _cur(), workers=0, seed=1,
                    cases=store.case_ids[:2]).load_state_dict(state)


def test_batches_own_their_memory(store) -> None:
    loader = make_loader(store, _cur(mode="constant"), workers=2, seed=3)
    it = iter(loader)
    kept = next(it)
    copy = kept["image"].clone()
    rest = [next(it) for _ in range(6)]
    assert torch.equal(kept["image"], copy)
    assert all(r["image"].data_ptr() != kept["image"].data_ptr() for r in rest)
    loader.close()


def test_border_padding_and_cases_smaller_than_the_patch(store) -> None:
    largest = np.max([store[c].shape for c in store.case_ids], axis=0)
    big = tuple(int(-(-(s + 8) // 8) * 8) for s in largest)
    cur = Curriculum.from_steps(patch=big, steps=(8, 8, 8), epochs=1, iterations_per_epoch=2,
                                batch=2, mode="constant")
    seen_unforced = False
    for b in make_loader(store, cur, workers=1, seed=0):
        for j, cid in enumerate(b["case_ids"]):
            case = store[cid]
            origin = np.array(b["origins"][j].tolist())
            if not b["forced_fg"][j]:  # random crops of a small case: the case sits inside
                assert (origin <= 0).all()
                seen_unforced = True
            # reference: the case's label placed on a zero canvas, the box cut out of it
            lo = np.maximum(origin, 0)
            hi = np.minimum(origin + np.array(big), case.shape)
            ref = np.zeros(big, np.uint8)
            ref[tuple(slice(a - o, c - o) for a, c, o in zip(lo, hi, origin))] = case.label[
                tuple(slice(a, c) for a, c in zip(lo, hi))]
            np.testing.assert_array_equal(b["label"][j, 0].numpy(), ref)
            outside = np.ones(big, bool)
            outside[tuple(slice(a - o, c - o) for a, c, o in zip(lo, hi, origin))] = False
            assert outside.any() and (b["image"][j, 0].numpy()[outside] == 0).all()
    assert seen_unforced


def test_margin_reads_a_larger_box(store) -> None:
    cur = _cur(mode="constant", epochs=1, ipe=2)
    b = next(iter(make_loader(store, cur, workers=0, seed=0, margin=(2, 4, 4))))
    assert b["patch_size"] == (16, 32, 32) and b["read_size"] == (20, 40, 40)
    assert tuple(b["image"].shape[2:]) == (20, 40, 40)


def test_validation_loader_repeats_the_same_batches(store) -> None:
    val = make_validation_loader(store, _cur(), store.case_ids[:2], batches=3, workers=1)
    one, two = _collect(val), _collect(val)
    _same(one, two)
    assert all(b["patch_size"] == (16, 32, 32) for b in one)
    assert {c for b in one for c in b["case_ids"]} <= set(store.case_ids[:2])


def test_test_cases_never_enter_training(store) -> None:
    assert store.test_ids and not set(store.test_ids) & set(store.case_ids)
    with pytest.raises(PGPSInputError, match="test cases"):
        make_loader(store, _cur(), workers=0, cases=store.test_ids)


def test_a_tight_ring_and_huge_bundles_never_deadlock(store, monkeypatch) -> None:
    """Dispatch and release share one thread: a bundle takes only what fits in the ring now.

    The ring is cut to the smallest that holds two steps and bundles may hold everything;
    an allocation that waited for room (as one in the releasing thread would) never returns.
    """
    import signal

    import pgps_data.loader.pipeline as pipeline
    import pgps_data.loader.workers as workers
    from pgps_data.loader.ring import ALIGN

    monkeypatch.setattr(workers, "BUNDLE_BYTES", 64 << 20)  # far beyond the ring
    monkeypatch.setattr(workers, "BUNDLE_MAX", 10_000)
    monkeypatch.setattr(pipeline, "ring_bytes", lambda step, _workers: 2 * step + 16 * ALIGN)

    def hung(*_):
        raise TimeoutError("the ring deadlocked")

    signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        cur = _cur(mode="constant", epochs=1, ipe=40, patch=(8, 16, 16))
        batches = _collect(make_loader(store, cur, workers=2, seed=0))
        ref = _collect(make_loader(store, cur, workers=0, seed=0))
    finally:
        signal.alarm(0)
    assert [b["step"] for b in batches] == list(range(40))
    _same(ref, batches)
