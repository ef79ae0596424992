"""The streaming loader: a torchdata.nodes graph feeding curriculum-sized batches.

    CropRequests (steps → per-case requests, a pure function of seed and step)
      → CropWorkers (our node: reader processes, the shared-memory ring, liveness)
      → StageBatcher (one step per batch; never mixes patch sizes)
      → PinMemory (CUDA only) → Prefetcher → torchdata Loader

    from pgps_data import open_store, Curriculum, make_loader
    loader = make_loader(open_store("Task.zarr"), cur, workers=8, seed=0, cases=None)
    for batch in loader: ...     # image, label, step, stage, patch_size, case_ids, forced_fg
    state = loader.state_dict(); loader.load_state_dict(state)

With ``augment=AugmentSpec()`` the spatial draw of every slot is made with its request
(nnU-Net's default law) and crop origins place nnU-Net's initial box I; the ~64 % unwarped
slots arrive as final-size rows of ``image``/``label``, the warped ones as whole boxes in
``warp_image``/``warp_label`` (rows ``warp_slots``) with their ``warp_angles`` and
``warp_scales``, for the device-side augmenter. Labels outside the case are then OUTSIDE.

The request stream is a pure function of (seed, step), so the loader's state is just the
next step: resuming replays nothing and reproduces the uninterrupted stream exactly. The
workers are started once per stream (by the thread that first asks for a batch) and live
across stage changes; a dead worker is an error within a second, not a hang.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import torch
from torchdata.nodes import BaseNode, Loader, PinMemory, Prefetcher

from pgps_data.errors import PGPSInputError
from pgps_data.loader.batching import StageBatcher, max_step_bytes
from pgps_data.loader.sampling import CropRequest, Sampler
from pgps_data.loader.watchdog import LoaderWorkerError
from pgps_data.loader.workers import CropWorkers, ring_bytes
from pgps_data.schedule.augment_geometry import OUTSIDE, AugmentSpec
from pgps_data.schedule.curriculum import Curriculum
from pgps_data.store.store import Store

STATE_VERSION = 1


def make_loader(
    store: Store,
    curriculum: Curriculum,
    *,
    workers: int = 4,
    seed: int = 0,
    cases: Sequence[str] | None = None,
    rank: int = 0,
    world: int = 1,
    p: float = 0.5,
    oversampling: str = "auto",
    margin: Sequence[int] = (0, 0, 0),
    label_pad: int = 0,
    prefetch: int = 2,
    pin_memory: bool | None = None,
    repeatable: bool = False,
    augment: AugmentSpec | None = None,
) -> PGPSLoader:
    """A loader of curriculum-sized batches over ``cases`` (None = all training cases).

    ``oversampling``: "auto" (the mode's published rule), "slot", "case_grouping" or
    "probabilistic" (each crop forced with probability ``p``). ``margin`` reads a larger
    box for later spatial augmentation (the batch then carries ``read_size`` too).
    ``pin_memory`` defaults to CUDA availability. ``repeatable`` makes every ``iter()``
    start again at step 0 (validation). ``augment`` (None: no augmentation, the stream of
    every earlier run) draws nnU-Net's spatial augmentation per slot and reads accordingly
    (module doc); it excludes ``margin``, and the label padding is then OUTSIDE.
    """
    case_ids = list(store.case_ids if cases is None else cases)
    bad = sorted(set(case_ids) - set(store.case_ids))
    if bad:
        hint = " (test cases are never used for training)" if set(bad) & set(store.test_ids) else ""
        raise PGPSInputError(f"{store.path}: no complete training case(s) {bad[:5]}{hint}")
    if augment is not None:
        if label_pad not in (0, OUTSIDE):
            raise ValueError(f"with augment the label padding is OUTSIDE ({OUTSIDE}), "
                             f"not {label_pad}")
        label_pad = OUTSIDE
    sampler = Sampler(case_ids, curriculum, seed=seed, rank=rank, world=world, p=p,
                      oversampling=oversampling, margin=margin, augment=augment)
    return PGPSLoader(store, sampler, workers=workers, label_pad=label_pad, prefetch=prefetch,
                      pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
                      repeatable=repeatable)


def make_validation_loader(
    store: Store,
    curriculum: Curriculum,
    cases: Sequence[str],
    *,
    batches: int = 10,
    workers: int = 2,
    seed: int = 1,
) -> PGPSLoader:
    """The same ``batches`` batches at the final patch on every pass (pseudo-Dice).

    They are read once, on the first complete pass, which then frees its workers and ring;
    later passes replay them (fresh copies of the same values, no process started).
    """
    val = Curriculum.from_steps(
        patch=curriculum.final_patch, steps=(1, 1, 1), epochs=1,
        iterations_per_epoch=batches, batch=curriculum.final_batch, mode="constant",
    )
    loader = make_loader(store, val, workers=workers, seed=seed, cases=cases, repeatable=True)
    loader.replay = True
    return loader


class PGPSLoader:
    """Iterable over batches; one long-lived worker pool; exact resume by step.

    With ``replay`` (and ``repeatable``), the batches of the first complete pass are kept
    and every later pass yields copies of them without reading anything.
    """

    def __init__(self, store: Store, sampler: Sampler, *, workers: int, label_pad: int,
                 prefetch: int, pin_memory: bool, repeatable: bool, replay: bool = False):
        self.store = store
        self.sampler = sampler
        self.curriculum = sampler.curriculum
        self.workers = int(workers)
        self.label_pad = label_pad
        self.prefetch = prefetch
        self.pin_memory = pin_memory
        self.repeatable = repeatable
        self.replay = replay
        self.channels = store.channels
        self._next_step = 0
        self._it: Any = None  # the torchdata Loader's iterator while a stream runs
        self._crop_workers: CropWorkers | None = None
        self._kept: list[dict[str, Any]] = []  # replay: the batches of the pass so far
        self._replaying: int | None = None  # replay: index of the next kept batch to yield

    def __len__(self) -> int:
        return self.curriculum.total_iterations

    def __iter__(self) -> PGPSLoader:
        if self.repeatable:
            self.close()
            self._next_step = 0
            if self.replay and len(self._kept) == self.curriculum.total_iterations:
                self._replaying = 0
            else:
                self._kept = []
        return self

    def __next__(self) -> dict[str, Any]:
        if self._replaying is not None:
            if self._replaying >= len(self._kept):
                raise StopIteration
            self._replaying += 1
            return _copy(self._kept[self._replaying - 1])
        if self._next_step >= self.curriculum.total_iterations:
            self.close()
            raise StopIteration
        if self._it is None:
            self._start()
        try:
            batch = next(self._it)
        except StopIteration:
            self.close()
            raise
        except BaseException:
            failure = self._crop_workers.failure if self._crop_workers is not None else None
            self.close()
            if failure is not None:  # the worker's own line, not torchdata's re-raised text
                raise failure from None
            raise
        self._next_step = batch["step"] + 1
        if self.replay:
            self._kept.append(batch)
            batch = _copy(batch)
            if self._next_step >= self.curriculum.total_iterations:
                self.close()  # the pass is complete: free the workers and the ring now
        return batch

    def worker_pids(self) -> list[int]:
        """Process ids of the running workers (empty before the first batch, after close)."""
        return self._crop_workers.worker_pids() if self._crop_workers is not None else []

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands, plus what it belongs to (seed, curriculum, cases)."""
        return {"version": STATE_VERSION, "next_step": self._next_step, **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at ``state``'s step; refused for another seed, curriculum, case list or
        augmentation spec."""
        mine = self._identity()
        # not the rank or the world size: no draw depends on them (sampling), so a run
        # resumes on another number of processes
        for key in ("seed", "curriculum", "cases", "oversampling", "augment"):
            if state.get(key) != mine.get(key):
                raise PGPSInputError(
                    f"loader state: its {key} ({str(state.get(key))[:80]}) differs from this "
                    f"loader's ({str(mine.get(key))[:80]}); a state only resumes the stream it came from"
                )
        self.close()
        self._kept, self._replaying = [], None
        self._next_step = int(state["next_step"])

    def _identity(self) -> dict[str, Any]:
        s = self.sampler
        return {
            "seed": s.seed,
            "rank": s.rank,
            "world": s.world,
            "curriculum": self.curriculum.fingerprint(),
            "cases": hashlib.sha256(json.dumps(s.case_ids).encode()).hexdigest()[:16],
            "oversampling": f"{s.oversampling}:{s.p}:{list(s.margin)}",
            # only with augmentation, so the states of earlier runs stay as they were
            **({} if s.augment is None else {"augment": s.augment.to_dict()}),
        }

    # -- the graph ----------------------------------------------------------------------
    def _start(self) -> None:
        requests = CropRequests(self.sampler, start=self._next_step)
        self._crop_workers = CropWorkers(
            requests, self.store, workers=self.workers, label_pad=self.label_pad,
            ring_bytes=ring_bytes(max_step_bytes(self.sampler, self.channels), self.workers))
        self._crop_workers.start()  # from this thread, before torchdata starts any of its own
        node: BaseNode = StageBatcher(self._crop_workers)
        if self.pin_memory:
            node = PinMemory(node)
        node = Prefetcher(node, prefetch_factor=self.prefetch)
        self._it = iter(Loader(node))

    def close(self) -> None:
        """Stop the workers and free the ring (also at the end of the stream).

        Only our own node is stopped: it first waits until no thread copies out of the
        ring, then ends the workers and unmaps the ring; a torchdata thread still waiting
        on the graph gets StopIteration from it, and torchdata ends its threads when the
        graph is dropped here.
        """
        if self._crop_workers is not None:
            self._crop_workers.close()
            self._crop_workers = None
        self._it = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


class CropRequests(BaseNode[CropRequest]):
    """Source node: the crop requests of step after step, in batch order.

    A pure function of the sampler and the position; its state is that position, the next
    request as (step, part), and ``reset`` with such a state continues exactly there.
    """

    def __init__(self, sampler: Sampler, start: int = 0):
        super().__init__()
        self.sampler = sampler
        self.start = int(start)
        self._step, self._part = self.start, 0
        self._requests: list[CropRequest] | None = None

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        state = initial_state or {"step": self.start, "part": 0}
        self._step, self._part = int(state["step"]), int(state["part"])
        self._requests = None

    def next(self) -> CropRequest:
        while self._step < self.sampler.curriculum.total_iterations:
            if self._requests is None:
                self._requests = self.sampler.requests(self._step)
            if self._part < len(self._requests):
                self._part += 1
                return self._requests[self._part - 1]
            self._step, self._part, self._requests = self._step + 1, 0, None
        raise StopIteration

    def get_state(self) -> dict[str, Any]:
        return {"step": self._step, "part": self._part}


def _copy(batch: dict[str, Any]) -> dict[str, Any]:
    """A batch with fresh tensors of the same values (pinned if the original is)."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            fresh = torch.empty_like(value, pin_memory=value.is_pinned())
            value = fresh.copy_(value)
        elif isinstance(value, list):
            value = list(value)
        out[key] = value
    return out


__all__ = ["make_loader", "make_validation_loader", "PGPSLoader", "LoaderWorkerError",
           "CropRequests"]
