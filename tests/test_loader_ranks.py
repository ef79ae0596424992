"""Data-parallel shares: rank r of W serves its contiguous slots of the global batch.

The union of the ranks' batches for a step is the single-process batch (crops, labels,
case ids, forced flags, spatial draws), whatever the world size, and the device
augmentation's draws follow the global slot (``slot_offset``), so augmented rows agree too.
"""

from __future__ import annotations

import pytest
import torch

from pgps_data import Curriculum, make_loader, open_store
from pgps_data.loader.sampling import Sampler, share
from pgps_data.schedule.augment_geometry import AugmentSpec
from tests.loader_store import build_store

ALWAYS = AugmentSpec(p_rotation=1.0, p_scaling=1.0)
KEYS = ("image", "label", "forced_fg", "forced_class", "origins")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return open_store(build_store(tmp_path_factory.mktemp("ranks"), cases=3))


def _cur(mode: str = "performance", batch: int = 3) -> Curriculum:
    return Curriculum.from_steps(patch=(8, 16, 16), steps=(4, 8, 8), epochs=4,
                                 iterations_per_epoch=2, batch=batch, mode=mode)


def test_shares_cover_the_batch_once() -> None:
    for b in range(1, 9):
        for world in range(1, b + 1):
            slots = [j for r in range(world) for j in share(b, r, world)]
            assert slots == list(range(b))


@pytest.mark.parametrize(("world", "augment"), [(2, None), (3, None), (2, ALWAYS)])
def test_the_union_of_the_ranks_batches_is_the_single_process_batch(store, world,
                                                                    augment) -> None:
    cur = _cur()
    one = list(make_loader(store, cur, workers=1, seed=4, augment=augment))
    ranks = [list(make_loader(store, cur, workers=1, seed=4, augment=augment,
                              rank=r, world=world)) for r in range(world)]
    assert len(one) == cur.total_iterations and all(len(r) == len(one) for r in ranks)
    for step, whole in enumerate(one):
        parts = [r[step] for r in ranks]
        assert [p["step"] for p in parts] == [step] * world
        assert [p["slot_offset"] for p in parts] == [
            share(whole["image"].shape[0], r, world).start for r in range(world)]
        for key in KEYS:
            assert torch.equal(torch.cat([p[key] for p in parts]), whole[key]), (step, key)
        assert sum((p["case_ids"] for p in parts), []) == whole["case_ids"]
        if augment is not None:
            rows = torch.cat([p["warp_slots"] + p["slot_offset"] for p in parts])
            assert torch.equal(rows, whole["warp_slots"])
            assert torch.equal(torch.cat([p["warp_image"] for p in parts]),
                               whole["warp_image"])
            assert torch.equal(torch.cat([p["warp_angles"] for p in parts]),
                               whole["warp_angles"])


def test_the_augmented_rows_of_the_ranks_are_the_single_process_rows(store) -> None:
    """The augmenter keys a rank's rows by slot_offset + row: the same draws as one process."""
    from pgps_train.augment.pipeline import BatchAugmenter

    cur, world = _cur(), 2
    one = list(make_loader(store, cur, workers=1, seed=4, augment=ALWAYS))
    ranks = [list(make_loader(store, cur, workers=1, seed=4, augment=ALWAYS, rank=r,
                              world=world)) for r in range(world)]
    aug = BatchAugmenter(channels=store.channels, seed=4)
    for step in (0, len(one) - 1):
        whole = aug(one[step], one[step]["image"].clone(), one[step]["label"].clone())
        parts = [aug(r[step], r[step]["image"].clone(), r[step]["label"].clone())
                 for r in ranks]
        for k in (0, 1):
            assert torch.equal(torch.cat([p[k] for p in parts]), whole[k]), (step, k)
        assert not torch.equal(parts[0][0], parts[1][0][: parts[0][0].shape[0]])


def test_a_stage_smaller_than_the_world_is_refused(store) -> None:
    cur = _cur(mode="efficiency", batch=2)
    with pytest.raises(ValueError, match="global batch of 2, smaller than the 3 processes"):
        Sampler(store.case_ids, cur, world=3, rank=0)


@pytest.mark.parametrize("augment", [None, ALWAYS])
def test_a_ranks_ring_holds_its_share_not_the_global_batch(store, augment) -> None:
    from pgps_data.loader.batching import max_step_bytes

    cur = _cur(mode="efficiency", batch=4)
    one = max_step_bytes(Sampler(store.case_ids, cur, augment=augment), 1)
    for rank in (0, 1):
        half = max_step_bytes(Sampler(store.case_ids, cur, augment=augment, rank=rank,
                                      world=2), 1)
        assert half * 2 == one
