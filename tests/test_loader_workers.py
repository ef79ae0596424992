"""Our worker node: how workers start, the validation replay, the state, a clean stderr."""

from __future__ import annotations

import _imp
import gc
import hashlib
import json
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest
import torch

from pgps_data import Curriculum, make_loader, open_store
from pgps_data.loader.pipeline import CropRequests, make_validation_loader
from pgps_data.loader.sampling import Sampler
from tests.loader_store import build_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return open_store(build_store(tmp_path_factory.mktemp("workers"), cases=3))


def _cur(ipe: int = 6, mode: str = "efficiency") -> Curriculum:
    return Curriculum.from_steps(patch=(16, 32, 32), steps=(8, 16, 16), epochs=4,
                                 iterations_per_epoch=ipe, batch=2, mode=mode)


def _same(a: list[dict], b: list[dict]) -> None:
    assert [x["step"] for x in a] == [y["step"] for y in b] and a
    for x, y in zip(a, b):
        assert x["case_ids"] == y["case_ids"]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])


def test_a_loader_starts_while_another_thread_holds_the_import_lock(store) -> None:
    """Forking a process takes the import lock (CPython's before-fork step), so workers
    forked from a thread while another thread imports would wait for it, or, forked
    mid-import, inherit a held lock; ours are fresh interpreters and start regardless."""
    list(make_loader(store, _cur(ipe=1), workers=1, seed=0))  # this process's imports done
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        _imp.acquire_lock()
        held.set()
        try:
            release.wait(20)
        finally:
            _imp.release_lock()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(5)
    got: list[dict] = []
    reader = threading.Thread(
        target=lambda: got.extend(make_loader(store, _cur(ipe=2), workers=2, seed=0)),
        daemon=True)
    t0 = time.monotonic()
    reader.start()
    reader.join(15)
    waited, done = time.monotonic() - t0, len(got)  # before the lock is released
    still_held = not release.is_set() and holder.is_alive()
    release.set()
    holder.join(5)
    reader.join(20)
    assert still_held and done == _cur(ipe=2).total_iterations, \
        f"{done} batches in {waited:.1f} s while the import lock was held"


def test_validation_batches_are_read_once_and_replayed(store, monkeypatch) -> None:
    val = make_validation_loader(store, _cur(), store.case_ids, batches=3, workers=1)
    it = iter(val)
    one = [next(it)]
    pids = val.worker_pids()
    one += [next(it) for _ in range(2)]
    assert len(pids) == 1 and next(it, None) is None
    assert val.worker_pids() == [] and not _alive(pids[0])  # freed after the first pass

    def no_process(*_a, **_k):
        raise AssertionError("a later pass started a worker process")

    for module, name in ((subprocess, "Popen"), (os, "fork"), (os, "posix_spawn")):
        monkeypatch.setattr(module, name, no_process)
    two, three = list(val), list(val)
    _same(one, two)
    _same(one, three)
    assert all(b["patch_size"] == (16, 32, 32) for b in two)
    two[0]["image"].zero_()  # a batch a user keeps or changes is never another pass's
    assert torch.equal(three[0]["image"], one[0]["image"]) and one[0]["image"].any()
    assert two[1]["image"].data_ptr() != three[1]["image"].data_ptr()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_training_and_validation_leave_stderr_clean(store, capfd) -> None:
    """The trainer's sequence: training batches, a validation pass, more training, another
    pass, close. Workers inherit nothing of their parent, so no pipeline of the parent's
    can be collected in a child ("Exception ignored in ... __del__"); on Linux their
    memory maps show it: no torch library in them, unlike a forked worker's."""
    train = make_loader(store, _cur(ipe=40, mode="constant"), workers=2, seed=0)
    val = make_validation_loader(store, _cur(), store.case_ids, batches=2, workers=1)
    it = iter(train)
    for _ in range(2):
        for _ in range(3):
            next(it)
        if sys.platform.startswith("linux"):
            for pid in train.worker_pids():
                maps = open(f"/proc/{pid}/maps").read()
                assert "python" in maps and "libtorch" not in maps, f"worker {pid} maps torch"
        assert len(list(val)) == 2
    train.close()
    val.close()
    del it, train, val
    gc.collect()
    time.sleep(0.5)
    err = capfd.readouterr().err
    assert "Exception ignored" not in err and "Traceback" not in err, err


def test_state_keys_are_unchanged_and_an_old_state_resumes_exactly(store) -> None:
    cur = _cur()
    full = list(make_loader(store, cur, workers=2, seed=5))
    loader = make_loader(store, cur, workers=2, seed=5)
    assert set(loader.state_dict()) == {"version", "next_step", "seed", "rank", "world",
                                        "curriculum", "cases", "oversampling"}
    # a state as checkpoints before our worker node wrote it, built by hand
    old = {"version": 1, "next_step": 7, "seed": 5, "rank": 0,
           "curriculum": cur.fingerprint(),
           "cases": hashlib.sha256(json.dumps(store.case_ids).encode()).hexdigest()[:16],
           "oversampling": "slot:0.5:[0, 0, 0]"}
    loader.load_state_dict(old)
    _same(full[7:], list(loader))


def test_the_request_source_resumes_from_its_own_state(store) -> None:
    """CropRequests' state is honest: the next request, as (step, part)."""
    sampler = Sampler(store.case_ids, _cur(mode="performance"), seed=2)
    a = CropRequests(sampler, start=3)
    taken = [next(a) for _ in range(5)]
    state = a.state_dict()
    rest = [next(a) for _ in range(7)]
    b = CropRequests(sampler)
    b.reset(state)
    assert [next(b) for _ in range(7)] == rest
    assert taken[0].step == 3 and rest[-1].step > taken[-1].step
